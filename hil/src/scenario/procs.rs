//! The runner's child processes: slmd, `slm-sim` and `fleet-sim`, each
//! with its stdout and stderr read line by line into memory by a thread, so
//! the runner can wait for a line (with a deadline, never a fixed sleep)
//! and keep a transcript for a failing check.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Lines one stream printed, with a condition variable for waiters.
#[derive(Clone, Default)]
pub struct Lines(Arc<(Mutex<LinesInner>, Condvar)>);

#[derive(Default)]
struct LinesInner {
    lines: Vec<String>,
    closed: bool,
}

impl Lines {
    fn follow(&self, stream: impl Read + Send + 'static) {
        let lines = self.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                let (lock, cv) = &*lines.0;
                lock.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .lines
                    .push(line);
                cv.notify_all();
            }
            let (lock, cv) = &*lines.0;
            lock.lock().unwrap_or_else(PoisonError::into_inner).closed = true;
            cv.notify_all();
        });
    }

    /// Every line so far.
    pub fn snapshot(&self) -> Vec<String> {
        self.0
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .lines
            .clone()
    }

    /// The first line from index `from` on that `want` accepts, waiting up
    /// to `timeout`; `None` when none came (or the stream closed).
    pub fn wait_from(
        &self,
        from: usize,
        timeout: Duration,
        want: impl Fn(&str) -> bool,
    ) -> Option<(usize, String)> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.0;
        let mut inner = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let mut seen = from;
        loop {
            while seen < inner.lines.len() {
                if want(&inner.lines[seen]) {
                    return Some((seen, inner.lines[seen].clone()));
                }
                seen += 1;
            }
            let now = Instant::now();
            if inner.closed || now >= deadline {
                return None;
            }
            inner = cv
                .wait_timeout(inner, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// How many lines so far.
    pub fn len(&self) -> usize {
        self.0
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .lines
            .len()
    }
}

/// A running child process.
pub struct Proc {
    /// What it is, for messages (`slmd`, `slm-sim north`).
    pub name: String,
    child: Child,
    /// Its standard output.
    pub stdout: Lines,
    /// Its standard error.
    pub stderr: Lines,
    /// Its exit, once seen.
    exited: Option<std::process::ExitStatus>,
}

impl Proc {
    /// Starts `cmd` with both outputs captured (and stdin a pipe kept open,
    /// for the simulator's control lines).
    pub fn spawn(name: &str, mut cmd: Command) -> std::io::Result<Proc> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Logs to stderr, not to a journal the runner may run under.
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET");
        let mut child = cmd.spawn()?;
        let stdout = Lines::default();
        let stderr = Lines::default();
        if let Some(out) = child.stdout.take() {
            stdout.follow(out);
        }
        if let Some(err) = child.stderr.take() {
            stderr.follow(err);
        }
        Ok(Proc {
            name: name.to_owned(),
            child,
            stdout,
            stderr,
            exited: None,
        })
    }

    /// Writes one line on its standard input.
    pub fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        use std::io::Write;
        let stdin = self
            .child
            .stdin
            .as_mut()
            .ok_or_else(|| std::io::Error::other("stdin closed"))?;
        stdin.write_all(format!("{line}\n").as_bytes())?;
        stdin.flush()
    }

    /// Sends `signal`.
    pub fn signal(&self, signal: Signal) -> Result<(), String> {
        let pid = i32::try_from(self.child.id()).map_err(|e| e.to_string())?;
        kill(Pid::from_raw(pid), signal).map_err(|e| format!("{}: {signal}: {e}", self.name))
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        if self.exited.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.exited = Some(status);
                false
            }
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// Waits up to `timeout` for it to end; its exit status.
    pub fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.running() {
                return self.exited;
            }
            if Instant::now() >= deadline {
                return None;
            }
            // The child's exit has no event to wait on in std: poll it.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; waits for the end.
    pub fn terminate(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        if !self.running() {
            return self.exited;
        }
        let _ = self.signal(Signal::SIGCONT);
        let _ = self.signal(Signal::SIGTERM);
        if let Some(status) = self.wait(grace) {
            return Some(status);
        }
        let _ = self.child.kill();
        self.wait(Duration::from_secs(5))
    }

    /// SIGKILL and wait.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.wait(Duration::from_secs(5));
    }

    /// The last lines of its stderr, for a failure message.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.stderr.snapshot();
        let start = lines.len().saturating_sub(n);
        lines[start..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.signal(Signal::SIGCONT);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
