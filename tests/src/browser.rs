//! A real Chromium (Debian's `chromium`, headless) driven over the
//! DevTools protocol, for the field page's tests.
//!
//! The protocol runs on a pipe (`--remote-debugging-pipe`: Chromium reads
//! commands on its fd 3 and writes answers and events on its fd 4, each a
//! JSON message ended by a NUL byte), so no port is opened and no
//! WebSocket client is needed. Calls are made one at a time; events are
//! ignored.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long one protocol call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A headless Chromium with a profile of its own (removed on drop).
pub struct Browser {
    child: Child,
    commands: std::fs::File,
    answers: mpsc::Receiver<Value>,
    next_id: std::cell::Cell<u64>,
    _profile: tempfile::TempDir,
}

/// One page (tab) of a [`Browser`].
pub struct Tab<'b> {
    browser: &'b Browser,
    session: String,
}

impl Browser {
    /// Starts `chromium --headless`; fails the test when it is not
    /// installed (`.ci/run` installs it).
    pub fn start() -> Browser {
        crate::needs::require_tools(&["chromium"]);
        let profile = tempfile::tempdir().expect("profile dir");
        // Chromium's ends of the two pipes, moved to fds ≥ 10 so that
        // placing them on 3 and 4 in the child cannot overwrite each other.
        let (from_us, to_chromium) = pipe();
        let (from_chromium, to_us) = pipe();
        let child_in = above_ten(from_us.as_raw_fd());
        let child_out = above_ten(to_us.as_raw_fd());
        drop((from_us, to_us));
        let mut cmd = Command::new("chromium");
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--remote-debugging-pipe",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--hide-scrollbars",
            "--mute-audio",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let (in_fd, out_fd) = (child_in.as_raw_fd(), child_out.as_raw_fd());
        // SAFETY: only async-signal-safe calls (dup2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(in_fd, 3) < 0 || libc::dup2(out_fd, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start chromium");
        drop((child_in, child_out));
        let (send, answers) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(std::fs::File::from(from_chromium));
            let mut message = Vec::new();
            while reader.read_until(0, &mut message).is_ok_and(|n| n > 0) {
                if message.last() == Some(&0) {
                    message.pop();
                }
                if let Ok(value) = serde_json::from_slice::<Value>(&message)
                    && send.send(value).is_err()
                {
                    return;
                }
                message.clear();
            }
        });
        Browser {
            child,
            commands: std::fs::File::from(to_chromium),
            answers,
            next_id: std::cell::Cell::new(1),
            _profile: profile,
        }
    }

    /// The browser's product and version (`Chrome/156.0.…`).
    pub fn version(&self) -> String {
        self.call(None, "Browser.getVersion", json!({}))["product"]
            .as_str()
            .unwrap_or("unknown")
            .to_owned()
    }

    /// Opens a tab `width` × `height` CSS pixels (a phone below 600) at `url`.
    pub fn open(&self, url: &str, width: u32, height: u32) -> Tab<'_> {
        let target = self.call(None, "Target.createTarget", json!({"url": "about:blank"}));
        let target = target["targetId"].as_str().expect("targetId").to_owned();
        let attached = self.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target, "flatten": true}),
        );
        let tab = Tab {
            browser: self,
            session: attached["sessionId"]
                .as_str()
                .expect("sessionId")
                .to_owned(),
        };
        tab.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600}),
        );
        tab.call("Page.enable", json!({}));
        tab.call("Page.navigate", json!({"url": url}));
        tab
    }

    /// One protocol call; its `result`. Panics on a protocol error.
    fn call(&self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = session.into();
        }
        let mut bytes = message.to_string().into_bytes();
        bytes.push(0);
        (&self.commands)
            .write_all(&bytes)
            .unwrap_or_else(|e| panic!("chromium is gone ({e}) at {method}"));
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let answer = self
                .answers
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no answer from chromium to {method}: {e}"));
            if answer["id"] == id {
                if let Some(error) = answer.get("error") {
                    panic!("{method}: {error}");
                }
                return answer["result"].clone();
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Tab<'_> {
    fn call(&self, method: &str, params: Value) -> Value {
        self.browser.call(Some(&self.session), method, params)
    }

    /// Evaluates `expression` in the page (promises awaited); its value as
    /// JSON. Panics when it throws.
    pub fn eval(&self, expression: &str) -> Value {
        self.try_eval(expression)
            .unwrap_or_else(|thrown| panic!("{expression}: {thrown}"))
    }

    /// Evaluates `expression`; what it threw as `Err`.
    pub fn try_eval(&self, expression: &str) -> Result<Value, String> {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        match result.get("exceptionDetails") {
            Some(thrown) => Err(thrown["exception"]["description"]
                .as_str()
                .map_or_else(|| thrown.to_string(), str::to_owned)),
            None => Ok(result["result"]["value"].clone()),
        }
    }

    /// Evaluates `expression` until its value is neither `null`, `false`
    /// nor missing, and returns it; `None` at the deadline. Throwing
    /// counts as not yet (the page may still be loading).
    pub fn wait(&self, expression: &str, timeout: Duration) -> Option<Value> {
        crate::poll_until(timeout, || {
            let value = self.try_eval(expression).ok()?;
            (!value.is_null() && value != false).then_some(value)
        })
    }

    /// Writes a PNG of the viewport to `path`; returns its size in pixels.
    pub fn screenshot(&self, path: &Path) -> (u32, u32) {
        use base64::Engine as _;
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("data"))
            .expect("base64");
        std::fs::write(path, &png).expect("write screenshot");
        png_size(&png).expect("a PNG")
    }
}

/// Width and height from a PNG's header.
pub fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    if png.get(..8)? != b"\x89PNG\r\n\x1a\n" || png.get(12..16)? != b"IHDR" {
        return None;
    }
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(png.get(at..at + 4)?.try_into().ok()?))
    };
    Some((word(16)?, word(20)?))
}

/// A pipe: its read end and its write end, both closed on exec.
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two fds on success; each is then owned once.
    let done = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert!(done == 0, "pipe: {}", std::io::Error::last_os_error());
    // SAFETY: fresh fds nobody else owns.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// A copy of `fd` at 10 or above, closed on exec (the child gets it on 3
/// or 4 through `dup2`).
fn above_ten(fd: RawFd) -> OwnedFd {
    // SAFETY: fcntl on an open fd we own; the new fd is owned by the result.
    let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
    assert!(copy >= 0, "dup: {}", std::io::Error::last_os_error());
    // SAFETY: `copy` is a fresh fd nobody else owns.
    unsafe { OwnedFd::from_raw_fd(copy) }
}
