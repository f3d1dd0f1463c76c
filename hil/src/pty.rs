//! The serial link: a pseudo-terminal standing in for the meter's
//! RS-232C or USB-CDC port.
//!
//! The host opens the slave side (`/dev/pts/N`, or the symlink given as the
//! link path, like a `/dev/serial/by-id/...` name); the simulator serves the
//! master side through tokio's [`AsyncFd`] (non-blocking).
//!
//! Invariants:
//! - The slave is put in raw mode (`cfmakeraw`: no echo, no line editing, no
//!   CR/LF translation) before anyone can open it, and the simulator keeps its
//!   own slave descriptor open, so the master never sees EIO when a host
//!   closes its side: the meter stays on the line between clients. The pty
//!   is therefore one long "connection" (its replay and pacing state last
//!   until it is torn down); a host cannot be told apart from the next.
//! - Both descriptors are close-on-exec, so a child process of the host
//!   cannot keep a dropped pty alive.
//! - The link path is always a complete symlink: it is created under a
//!   temporary name and renamed into place. On a `drop_every` the new pty is
//!   created first (so it gets a different `/dev/pts` number), the link is
//!   re-pointed, and then the old pty is closed: a host holding the old one
//!   open sees end of file or EIO, as when a USB device vanishes. A power
//!   cycle does the same. (A sleeping meter keeps its pty: serial lines are
//!   not turned off by sleep; the session reads and ignores.) The link is
//!   removed on shutdown (and when the [`PtyMeter`] is dropped), unless it no
//!   longer points at this simulator's pty.

use crate::{LinkEnd, LinkKind, Simulator};
use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::pty::{OpenptyResult, openpty};
use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

/// A simulated meter on a pseudo-terminal, ready to be served.
#[derive(Debug)]
pub struct PtyMeter {
    /// The meter behind the pty.
    sim: Simulator,
    /// The current pty.
    pty: RawPty,
    /// The symlink kept pointing at the current pty's slave, if any.
    link: LinkGuard,
    /// What [`PtyMeter::path`] answers: the link, else the first slave path.
    path: PathBuf,
}

/// One pty pair, not yet registered with tokio.
#[derive(Debug)]
struct RawPty {
    /// The simulator's side (non-blocking).
    master: OwnedFd,
    /// Held open (never read) so the master never sees EIO between clients.
    _slave: OwnedFd,
    /// `/dev/pts/N`.
    path: PathBuf,
}

impl PtyMeter {
    pub(crate) fn open(sim: Simulator, link: Option<PathBuf>) -> io::Result<PtyMeter> {
        let pty = RawPty::create()?;
        let mut guard = LinkGuard { link, target: None };
        guard.point_at(&pty.path)?;
        let path = guard.link.clone().unwrap_or_else(|| pty.path.clone());
        tracing::info!(tty = %pty.path.display(), link = ?guard.link, "pty meter ready");
        Ok(PtyMeter {
            sim,
            pty,
            link: guard,
            path,
        })
    }

    /// The path a host opens: the link if one was given, else the slave tty.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The slave tty of the current pty (`/dev/pts/N`).
    pub fn tty_path(&self) -> &Path {
        &self.pty.path
    }

    /// The link path, if one was given.
    pub fn link(&self) -> Option<&Path> {
        self.link.link.as_deref()
    }

    /// Serves the meter until `shutdown`, re-creating the pty on each
    /// `drop_every` and power cycle. Removes the link before returning.
    pub async fn serve(self, shutdown: CancellationToken) -> io::Result<()> {
        let PtyMeter {
            sim,
            mut pty,
            mut link,
            path: _,
        } = self;
        sim.start_clocks(&shutdown);
        loop {
            let number = sim.connected();
            let io = PtyIo::new(pty.master)?;
            let end = sim.run_link(io, number, LinkKind::Serial, &shutdown).await;
            sim.disconnected(&end);
            match end {
                LinkEnd::Shutdown => break,
                // A serial link never ends for sleep; were it to, a new pty is harmless.
                LinkEnd::Dropped | LinkEnd::PowerCycled | LinkEnd::Asleep => {
                    // The old master was closed with the session; the new pty
                    // is created while the old slave is still held, so its
                    // number differs. Replacing `pty` closes the old slave.
                    let next = RawPty::create()?;
                    link.point_at(&next.path)?;
                    tracing::info!(tty = %next.path.display(), "pty re-created after {end:?}");
                    pty = next;
                }
                LinkEnd::Closed(result) => {
                    // Cannot happen while the slave is held open; a pty that
                    // fails anyway is a fault of the host system.
                    result?;
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "pty master closed unexpectedly",
                    ));
                }
            }
        }
        link.remove();
        Ok(())
    }
}

impl RawPty {
    /// A raw-mode pty pair with a non-blocking master, both close-on-exec.
    fn create() -> io::Result<RawPty> {
        let OpenptyResult { master, slave } = openpty(None, None)?;
        for fd in [&master, &slave] {
            fcntl(fd.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
        }
        let flags = OFlag::from_bits_truncate(fcntl(master.as_fd(), FcntlArg::F_GETFL)?);
        fcntl(master.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        let mut termios = tcgetattr(slave.as_fd())?;
        cfmakeraw(&mut termios);
        tcsetattr(slave.as_fd(), SetArg::TCSANOW, &termios)?;
        let path = nix::unistd::ttyname(slave.as_fd())?;
        Ok(RawPty {
            master,
            _slave: slave,
            path,
        })
    }
}

/// Keeps the link symlink pointing at the current slave; removes it on drop.
#[derive(Debug)]
struct LinkGuard {
    /// Where the symlink lives, if one was asked for.
    link: Option<PathBuf>,
    /// What it was last pointed at by us.
    target: Option<PathBuf>,
}

impl LinkGuard {
    /// Atomically (re-)points the link at `target`.
    fn point_at(&mut self, target: &Path) -> io::Result<()> {
        let Some(link) = &self.link else {
            return Ok(());
        };
        let name = link.file_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("link path {} has no file name", link.display()),
            )
        })?;
        static TEMP: AtomicU64 = AtomicU64::new(0);
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(
            ".tmp-{}-{}",
            std::process::id(),
            TEMP.fetch_add(1, Ordering::Relaxed)
        ));
        let temp = link.with_file_name(temp_name);
        std::os::unix::fs::symlink(target, &temp)?;
        if let Err(e) = std::fs::rename(&temp, link) {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
        self.target = Some(target.to_owned());
        Ok(())
    }

    /// Removes the link if it still points where we pointed it.
    fn remove(&mut self) {
        let (Some(link), Some(target)) = (&self.link, self.target.take()) else {
            return;
        };
        match std::fs::read_link(link) {
            Ok(current) if current == target => {
                if let Err(e) = std::fs::remove_file(link) {
                    tracing::warn!(link = %link.display(), "could not remove the link: {e}");
                }
            }
            _ => {}
        }
    }
}

impl Drop for LinkGuard {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The master side as a tokio byte stream.
struct PtyIo {
    /// The master, registered with the reactor.
    fd: AsyncFd<OwnedFd>,
}

impl PtyIo {
    fn new(master: OwnedFd) -> io::Result<PtyIo> {
        Ok(PtyIo {
            // SAFETY: an `OwnedFd` is open until dropped and always yields the
            // same descriptor; the `AsyncFd` owns it, so it stays open for the
            // registration's whole life.
            fd: unsafe { AsyncFd::register(master) }?,
        })
    }
}

impl AsyncRead for PtyIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard
                .try_io(|fd| nix::unistd::read(fd.get_ref(), unfilled).map_err(io::Error::from))
            {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // EIO: no slave open at all; read as end of file.
                Ok(Err(e)) if e.raw_os_error() == Some(nix::libc::EIO) => {
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for PtyIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), buf).map_err(io::Error::from))
            {
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Writes go straight to the kernel; nothing is buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
