//! The install test: the .deb installed the way an installer does it, in a
//! booted Debian with systemd as PID 1 (debootstrap + systemd-nspawn): amd64
//! in the host's Debian and in Debian 11 (bullseye, systemd 247, glibc 2.31:
//! the oldest Debian the packages promise), and arm64 in Debian 11 through
//! qemu-user-static registered with binfmt_misc (with one drop-in for what
//! qemu-user cannot emulate, see `install_upgrade_remove_purge`):
//! install → service active (`Type=notify`: only after `READY=1`) → the
//! API answers → `journalctl -u slmd -o json` has the structured fields →
//! an upgrade keeps the edited conffile and restarts the daemon on it →
//! remove keeps `/var/lib/slmd` → purge deletes it → poweroff.
//!
//! Each Debian tree is bootstrapped once per machine into
//! `<target dir>/install-rootfs/<suite>-<arch>-…` and never booted itself: every run boots
//! a fresh overlay of it (a copy where overlayfs is not available), mounted
//! in a private mount namespace that dies with the container, so nothing
//! stays mounted whatever happens to the test. The container has its own
//! network namespace (loopback only): its daemon's port cannot clash with
//! anything on the host. A guard powers the container off (or kills it) if
//! the test fails half-way.
//!
//! Needs root, systemd-nspawn and nsenter, and the first time debootstrap
//! and the network; arm64 also needs qemu-user-static and binfmt_misc. So
//! the tests are `#[ignore]`d in a plain `cargo test`; `.ci/run` installs
//! what they need and runs them (`-- --include-ignored`). Run without
//! something they need, they fail and say what.

use serde_json::Value;
use slmd_e2e::deb::{build_deb, have, target_dir};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Where the host's folder of .debs appears in the container (read-only).
const DEBS_IN_CONTAINER: &str = "/srv/slmd-debs";
/// On top of debootstrap's minbase: systemd as init, and adduser and procps
/// (priority important: on every Debian but a minbase; the package depends
/// on them, and `dpkg -i` does not fetch dependencies).
const INCLUDE: &str = "systemd,systemd-sysv,dbus,adduser,procps";
/// Part of the cached tree's name: bump it when INCLUDE or the bootstrap
/// changes, so an old cache is not reused.
const CACHE_TAG: &str = "minbase-systemd-2";
const CONTAINER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Fails the test: this machine cannot run it, and `why` says what is
/// missing.
fn cannot_run(why: &str) -> ! {
    panic!("the install test cannot run here: {why}");
}

/// What this machine lacks to run the test, if anything.
fn missing_prerequisites() -> Option<String> {
    let euid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    if euid != Some(0) {
        return Some("needs root (systemd-nspawn and mounts); run the tests as root".into());
    }
    let strip = if have("strip") { "strip" } else { "objcopy" };
    let missing: Vec<&str> = [
        "systemd-nspawn",
        "nsenter",
        "unshare",
        "dpkg",
        "dpkg-deb",
        "gzip",
        "bash",
        strip,
    ]
    .into_iter()
    .filter(|t| !have(t))
    .collect();
    if missing.is_empty() {
        None
    } else {
        Some(format!(
            "needs {} (packages systemd-container, util-linux, dpkg, binutils; .ci/run installs them)",
            missing.join(", ")
        ))
    }
}

/// Runs `cmd` to completion or until `limit` (then kills it).
fn output_within(cmd: &mut Command, limit: Duration) -> Result<Output, String> {
    let name = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {name}: {e}"))?;
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped")));
    let err = drain(Box::new(child.stderr.take().expect("piped")));
    match wait_within(&mut child, limit) {
        Some(status) => Ok(Output {
            status,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        }),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!("{name} did not finish within {limit:?}"))
        }
    }
}

/// Polls `child` until it exits or `limit` passes.
fn wait_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            _ => return None,
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn deb_version(deb: &Path) -> String {
    let out = Command::new("dpkg-deb")
        .args(["-f"])
        .arg(deb)
        .arg("Version")
        .output()
        .expect("dpkg-deb");
    text(&out.stdout).trim().to_owned()
}

/// The host's Debian suite and a mirror for it, from /etc/os-release and
/// the apt sources (`SLMD_TEST_DEBIAN_MIRROR` overrides the mirror).
fn suite_and_mirror() -> Result<(String, String), String> {
    let os =
        std::fs::read_to_string("/etc/os-release").map_err(|e| format!("/etc/os-release: {e}"))?;
    let suite = os
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|s| s.trim_matches('"').to_owned())
        .filter(|s| !s.is_empty())
        .ok_or("no VERSION_CODENAME in /etc/os-release: not a Debian host")?;
    if let Ok(m) = std::env::var("SLMD_TEST_DEBIAN_MIRROR") {
        return Ok((suite, m));
    }
    let mut found = None;
    // deb822 .sources files: the first "deb" stanza listing the suite.
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut files: Vec<PathBuf> = dir.filter_map(|e| Some(e.ok()?.path())).collect();
        files.sort();
        for file in files
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "sources"))
        {
            let content = std::fs::read_to_string(file).unwrap_or_default();
            for stanza in content.split("\n\n") {
                let field = |name: &str| {
                    stanza.lines().find_map(|l| {
                        l.strip_prefix(name)
                            .and_then(|r| r.strip_prefix(':'))
                            .map(str::trim)
                    })
                };
                let types = field("Types").unwrap_or_default();
                let suites = field("Suites").unwrap_or_default();
                if types.split_whitespace().any(|t| t == "deb")
                    && suites.split_whitespace().any(|s| s == suite)
                {
                    if let Some(uri) = field("URIs").and_then(|u| u.split_whitespace().next()) {
                        found.get_or_insert_with(|| uri.to_owned());
                    }
                }
            }
        }
    }
    // One-line sources.list: deb [options] URI suite components
    if found.is_none() {
        let list = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
        for line in list.lines() {
            let mut words = line.split_whitespace().filter(|w| !w.starts_with('['));
            if words.next() == Some("deb") {
                if let (Some(uri), Some(s)) = (words.next(), words.next()) {
                    if s == suite {
                        found.get_or_insert_with(|| uri.to_owned());
                    }
                }
            }
        }
    }
    let mirror = found.unwrap_or_else(|| "http://deb.debian.org/debian".to_owned());
    Ok((suite, mirror))
}

/// The cached Debian tree of `suite` (the host's when `None`) for `arch`,
/// bootstrapped on first use (under a lock, so concurrent runs bootstrap
/// it once). `Err` means the machine cannot provide it (no debootstrap, no
/// network, no way to run `arch`'s binaries).
fn debian_tree(arch: &str, suite: Option<&str>) -> Result<PathBuf, String> {
    let base = target_dir().join("install-rootfs");
    std::fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
    let (host_suite, mirror) = suite_and_mirror()?;
    let suite = suite.map_or(host_suite, str::to_owned);
    let lock_file = std::fs::File::create(base.join(format!(".lock-{suite}-{arch}")))
        .map_err(|e| format!("lock: {e}"))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("lock {}: {e}", base.display()))?;

    let tree = base.join(format!("{suite}-{arch}-{CACHE_TAG}"));
    if tree.join("etc/os-release").exists() || tree.join("usr/lib/os-release").exists() {
        return Ok(tree);
    }
    if !have("debootstrap") {
        return Err(format!(
            "no cached Debian tree at {} and no debootstrap to make one (package debootstrap)",
            tree.display()
        ));
    }
    let partial = base.join(format!("{suite}-{arch}-{CACHE_TAG}.partial"));
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(|e| format!("{}: {e}", partial.display()))?;
    }
    println!(
        "bootstrapping {suite} from {mirror} into {} (once per machine)",
        tree.display()
    );
    let out = output_within(
        Command::new("debootstrap")
            .args([
                &format!("--arch={arch}"),
                "--variant=minbase",
                &format!("--include={INCLUDE}"),
                &suite,
            ])
            .arg(&partial)
            .arg(&mirror),
        Duration::from_secs(30 * 60),
    )?;
    if !out.status.success() {
        let log = std::fs::read_to_string(partial.join("debootstrap/debootstrap.log"))
            .unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        return Err(format!(
            "debootstrap --arch={arch} {suite} {mirror} failed ({}): {}{}\n{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    // The downloaded .debs are not needed to boot.
    if let Ok(dir) = std::fs::read_dir(partial.join("var/cache/apt/archives")) {
        for e in dir.flatten() {
            if e.path().extension().is_some_and(|x| x == "deb") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    std::fs::rename(&partial, &tree).map_err(|e| format!("rename: {e}"))?;
    // Trees made for an older CACHE_TAG are not used any more.
    let prefix = format!("{suite}-{arch}-");
    for old in std::fs::read_dir(&base).into_iter().flatten().flatten() {
        let name = old.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && old.path() != tree {
            let _ = std::fs::remove_dir_all(old.path());
        }
    }
    Ok(tree)
}

/// Whether overlayfs can be mounted over `lower` here (tried in a private
/// mount namespace that vanishes right after).
fn overlay_works(lower: &Path, scratch: &Path) -> bool {
    let dirs = ["upper", "work", "merged"].map(|d| scratch.join(d));
    if dirs.iter().any(|d| std::fs::create_dir_all(d).is_err()) {
        return false;
    }
    let ok = output_within(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--"])
            .args(["mount", "-t", "overlay", "overlay", "-o"])
            .arg(overlay_options(lower, &dirs[0], &dirs[1]))
            .arg(&dirs[2]),
        Duration::from_secs(30),
    )
    .is_ok_and(|o| o.status.success());
    let _ = std::fs::remove_dir_all(scratch);
    ok
}

fn overlay_options(lower: &Path, upper: &Path, work: &Path) -> String {
    format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    )
}

/// A booted container. Dropping it powers it off (or kills it); its
/// overlay or copy goes with the run directory.
struct Container {
    nspawn: Child,
    /// The container's PID 1 (systemd), as seen from the host.
    init: Option<i32>,
    boot_log: PathBuf,
    /// How the root was made: "overlay" or "copy".
    root_kind: &'static str,
    _run: tempfile::TempDir,
}

impl Container {
    /// Boots `tree` (through an overlay or a copy) with `debs` bound at
    /// [`DEBS_IN_CONTAINER`], and waits until systemd reports the system
    /// running.
    fn boot(tree: &Path, debs: &Path) -> Result<Container, String> {
        let run = tempfile::Builder::new()
            .prefix("install-container-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .map_err(|e| format!("run dir: {e}"))?;
        let boot_log = run.path().join("boot.log");
        let log = std::fs::File::create(&boot_log).map_err(|e| format!("boot log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("boot log: {e}"))?;

        let overlay = overlay_works(tree, &run.path().join("probe"));
        let root = if overlay {
            run.path().join("merged")
        } else {
            let root = run.path().join("root");
            let out = output_within(
                Command::new("cp")
                    .args(["-a", "--reflink=auto"])
                    .arg(tree)
                    .arg(&root),
                Duration::from_secs(600),
            )?;
            if !out.status.success() {
                return Err(format!(
                    "cp -a of the Debian tree failed: {}",
                    text(&out.stderr)
                ));
            }
            root
        };
        let mut nspawn_args: Vec<std::ffi::OsString> = vec!["-D".into(), root.clone().into()];
        for arg in [
            "--register=no",
            "--keep-unit",
            "--private-network",
            "--console=read-only",
        ] {
            nspawn_args.push(arg.into());
        }
        // Unique per run: nspawn keys some of its host-side state on it.
        nspawn_args.push(format!("--machine=slmd-install-{}", std::process::id()).into());
        let mut bind = std::ffi::OsString::from("--bind-ro=");
        bind.push(debs);
        bind.push(format!(":{DEBS_IN_CONTAINER}"));
        nspawn_args.push(bind);
        nspawn_args.push("--boot".into());

        let mut cmd = if overlay {
            let (upper, work) = (run.path().join("upper"), run.path().join("work"));
            for d in [&upper, &work, &root] {
                std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
            }
            // unshare execs sh, which execs nspawn: one process, whose mount
            // namespace (and so the overlay) ends with it.
            let mut cmd = Command::new("unshare");
            cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
                .arg(r#"o=$1 m=$2; shift 2; mount -t overlay overlay -o "$o" "$m" && exec "$@""#)
                .arg("sh")
                .arg(overlay_options(tree, &upper, &work))
                .arg(&root)
                .arg("systemd-nspawn");
            cmd
        } else {
            Command::new("systemd-nspawn")
        };
        cmd.args(&nspawn_args)
            .env("SYSTEMD_COLORS", "0")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let nspawn = cmd
            .spawn()
            .map_err(|e| format!("cannot start systemd-nspawn: {e}"))?;
        let mut container = Container {
            nspawn,
            init: None,
            boot_log,
            root_kind: if overlay { "overlay" } else { "copy" },
            _run: run,
        };
        container.find_init(Duration::from_secs(60))?;
        container.wait_running(Duration::from_secs(120))?;
        Ok(container)
    }

    /// Finds the container's systemd: the child of nspawn named `systemd`.
    fn find_init(&mut self, limit: Duration) -> Result<(), String> {
        let nspawn = i32::try_from(self.nspawn.id()).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.nspawn.try_wait() {
                return Err(format!(
                    "systemd-nspawn exited ({status}) before the container booted\n{}",
                    self.log_tail(40)
                ));
            }
            if let Some(init) = children(nspawn)
                .into_iter()
                .find(|&pid| comm(pid).as_deref() == Some("systemd"))
            {
                self.init = Some(init);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "no systemd in the container after {limit:?}\n{}",
            self.log_tail(40)
        ))
    }

    fn wait_running(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Ok(out) = self.exec(&["systemctl", "is-system-running"], Duration::from_secs(10))
            {
                last = text(&out.stdout).trim().to_owned();
                match last.as_str() {
                    "running" => return Ok(()),
                    "degraded" => {
                        // Some unit of the minimal system failed; say which,
                        // but the system is up.
                        let failed = self
                            .exec(
                                &["systemctl", "--failed", "--no-legend"],
                                Duration::from_secs(10),
                            )
                            .map(|o| text(&o.stdout))
                            .unwrap_or_default();
                        println!("container degraded (not slmd's doing): {failed}");
                        return Ok(());
                    }
                    _ => {}
                }
            }
            if let Ok(Some(status)) = self.nspawn.try_wait() {
                return Err(format!(
                    "the container exited ({status})\n{}",
                    self.log_tail(40)
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!(
            "the container's systemd is not running after {limit:?} (last: {last:?})\n{}",
            self.log_tail(40)
        ))
    }

    fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.boot_log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(lines).collect();
        format!(
            "--- boot log (last {lines} lines) ---\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }

    /// Runs a command inside the container (all its namespaces, a clean
    /// environment).
    fn exec(&self, args: &[&str], limit: Duration) -> Result<Output, String> {
        let init = self.init.ok_or("the container has not booted")?;
        output_within(
            Command::new("nsenter")
                .env_clear()
                .env("PATH", CONTAINER_PATH)
                .env("LANG", "C.UTF-8")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .env("SYSTEMD_PAGER", "")
                .env("SYSTEMD_COLORS", "0")
                .args(["--target", &init.to_string(), "--all", "--"])
                .args(args),
            limit,
        )
    }

    /// `sh -c script` in the container; its output, whatever the status.
    fn sh(&self, script: &str) -> Output {
        self.exec(&["sh", "-c", script], Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Whether `sh -c test` succeeds in the container.
    fn test(&self, test: &str) -> bool {
        self.sh(test).status.success()
    }

    /// stdout of a command that must succeed, trimmed.
    fn ok(&self, args: &[&str], limit: Duration) -> String {
        let out = self.exec(args, limit).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.status.success(),
            "{args:?} in the container failed ({}):\n{}{}\n{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr),
            self.service_report()
        );
        text(&out.stdout).trim().to_owned()
    }

    /// One `systemctl show` property of slmd.service.
    fn property(&self, name: &str) -> String {
        self.exec(
            &[
                "systemctl",
                "show",
                "--property",
                name,
                "--value",
                "slmd.service",
            ],
            Duration::from_secs(20),
        )
        .map(|o| text(&o.stdout).trim().to_owned())
        .unwrap_or_default()
    }

    /// The service's status and recent journal, for failure messages.
    fn service_report(&self) -> String {
        let status = self
            .exec(
                &[
                    "systemctl",
                    "status",
                    "--no-pager",
                    "--lines=0",
                    "slmd.service",
                ],
                Duration::from_secs(20),
            )
            .map(|o| text(&o.stdout))
            .unwrap_or_default();
        let journal = self
            .exec(
                &["journalctl", "--no-pager", "-n", "60", "-u", "slmd.service"],
                Duration::from_secs(20),
            )
            .map(|o| text(&o.stdout))
            .unwrap_or_default();
        format!("--- systemctl status slmd ---\n{status}--- journalctl -u slmd ---\n{journal}")
    }

    /// Waits until slmd.service is active with a main PID other than
    /// `not_pid`; fails at once when it has had to restart.
    fn wait_active(&self, not_pid: u32, limit: Duration) -> u32 {
        let deadline = Instant::now() + limit;
        loop {
            let state = self.property("ActiveState");
            let pid: u32 = self.property("MainPID").parse().unwrap_or(0);
            if state == "active" && pid != 0 && pid != not_pid {
                return pid;
            }
            let restarts: u32 = self.property("NRestarts").parse().unwrap_or(0);
            assert!(
                restarts == 0 && state != "failed" && Instant::now() < deadline,
                "slmd.service is not active (ActiveState={state}, MainPID={pid}, NRestarts={restarts})\n{}",
                self.service_report()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// GET `path` from the daemon's API inside the container (bash's
    /// /dev/tcp: the minimal system has no curl); the status line.
    fn http_status(&self, port: u16, path: &str) -> String {
        let script = format!(
            "exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'GET {path} HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && timeout 10 cat <&3"
        );
        let out = self
            .exec(&["bash", "-c", &script], Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{e}"));
        text(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// `systemctl poweroff` and wait for nspawn to exit.
    fn poweroff(&mut self, limit: Duration) -> Result<ExitStatus, String> {
        // The call may be cut off as the container goes down.
        let _ = self.exec(&["systemctl", "poweroff"], Duration::from_secs(30));
        wait_within(&mut self.nspawn, limit)
            .ok_or_else(|| format!("the container did not exit within {limit:?} of poweroff"))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if !matches!(self.nspawn.try_wait(), Ok(None)) {
            return;
        }
        if self.init.is_some() {
            let _ = self.exec(
                &["systemctl", "poweroff", "--no-block"],
                Duration::from_secs(10),
            );
        }
        if wait_within(&mut self.nspawn, Duration::from_secs(30)).is_none() {
            // Killing PID 1 of the container kills everything in it.
            if let Some(init) = self.init {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(init),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = self.nspawn.kill();
            let _ = wait_within(&mut self.nspawn, Duration::from_secs(10));
        }
    }
}

/// Child pids of `parent`, from /proc.
fn children(parent: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // pid (comm) state ppid ...: comm may hold spaces.
                    let rest = &stat[stat.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Phase timings, printed as they pass.
struct Timings {
    start: Instant,
    last: Instant,
    phases: Vec<(String, Duration)>,
}

impl Timings {
    fn new() -> Timings {
        let now = Instant::now();
        Timings {
            start: now,
            last: now,
            phases: Vec::new(),
        }
    }

    fn mark(&mut self, phase: &str) {
        let now = Instant::now();
        let took = now - self.last;
        self.last = now;
        println!("install test: {phase}: {:.1}s", took.as_secs_f64());
        self.phases.push((phase.to_owned(), took));
    }

    fn summary(&self) -> String {
        let mut s = String::from("install test timings:\n");
        for (phase, took) in &self.phases {
            s.push_str(&format!("  {:>6.1}s  {phase}\n", took.as_secs_f64()));
        }
        s.push_str(&format!(
            "  {:>6.1}s  total\n",
            self.start.elapsed().as_secs_f64()
        ));
        s
    }
}

/// Journal entries of slmd.service (the daemon's own lines, not
/// systemd's about it).
fn slmd_journal(c: &Container) -> Vec<Value> {
    let out = c
        .exec(
            &[
                "journalctl",
                "--no-pager",
                "-o",
                "json",
                "-u",
                "slmd.service",
            ],
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    text(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["_SYSTEMD_UNIT"] == "slmd.service")
        .collect()
}

#[test]
#[ignore = "needs root, systemd-nspawn, debootstrap (network); .ci/run installs them"]
fn install_upgrade_remove_purge_in_a_booted_debian() {
    install_upgrade_remove_purge("amd64", None);
}

/// The same package in Debian 11 (bullseye, systemd 247, glibc 2.31), the
/// oldest Debian it promises.
#[test]
#[ignore = "needs root, systemd-nspawn, debootstrap (network); .ci/run installs them"]
fn install_upgrade_remove_purge_in_a_booted_debian_11() {
    install_upgrade_remove_purge("amd64", Some("bullseye"));
}

/// The arm64 package in Debian 11 (bullseye), the oldest Debian it
/// promises, booted through qemu-user-static.
#[test]
#[ignore = "needs root, systemd-nspawn, debootstrap, qemu-user-static, ARM cross compilers; .ci/run installs them"]
fn arm64_install_upgrade_remove_purge_in_a_booted_debian_11() {
    install_upgrade_remove_purge("arm64", Some("bullseye"));
}

/// Makes sure the kernel runs `cpu` (qemu's name: `aarch64`) binaries
/// through qemu-user-static: binfmt_misc mounted, and Debian's entry from
/// `/usr/lib/binfmt.d/qemu-<cpu>.conf` registered when there is none. The
/// entry must have the F flag (the interpreter is opened at registration),
/// so that it works inside the container's root, which has no qemu.
fn ensure_binfmt(cpu: &str) -> Result<(), String> {
    let dir = Path::new("/proc/sys/fs/binfmt_misc");
    if !dir.join("register").exists() {
        let out = output_within(
            Command::new("mount")
                .args(["-t", "binfmt_misc", "binfmt_misc"])
                .arg(dir),
            Duration::from_secs(30),
        )?;
        if !out.status.success() {
            return Err(format!(
                "cannot mount binfmt_misc on {}: {}",
                dir.display(),
                text(&out.stderr).trim()
            ));
        }
    }
    let entry = dir.join(format!("qemu-{cpu}"));
    let usable = || {
        let state = std::fs::read_to_string(&entry).ok()?;
        let enabled = state.lines().next() == Some("enabled");
        let fixed = state
            .lines()
            .any(|l| l.starts_with("flags:") && l.contains('F'));
        Some(if enabled && fixed {
            Ok(())
        } else {
            Err(format!(
                "binfmt_misc's qemu-{cpu} entry is not enabled with the F flag:\n{state}"
            ))
        })
    };
    if let Some(state) = usable() {
        return state;
    }
    let conf = Path::new("/usr/lib/binfmt.d").join(format!("qemu-{cpu}.conf"));
    let conf_text = std::fs::read_to_string(&conf).map_err(|e| {
        format!(
            "{}: {e} (package qemu-user-static; .ci/run installs it)",
            conf.display()
        )
    })?;
    let line = conf_text
        .lines()
        .find(|l| l.starts_with(':'))
        .ok_or_else(|| format!("no binfmt_misc entry in {}", conf.display()))?;
    if let Err(e) = std::fs::write(dir.join("register"), line) {
        // Another test may have registered it meanwhile.
        if usable().is_none() {
            return Err(format!("cannot register {}: {e}", conf.display()));
        }
    }
    usable().unwrap_or_else(|| Err(format!("qemu-{cpu} did not appear in binfmt_misc")))
}

fn install_upgrade_remove_purge(arch: &str, suite: Option<&str>) {
    if let Some(why) = missing_prerequisites() {
        cannot_run(&why);
    }
    if arch == "arm64" {
        if let Err(why) = ensure_binfmt("aarch64") {
            cannot_run(&format!("cannot run arm64 binaries here: {why}"));
        }
    }
    let mut t = Timings::new();

    let tree = match debian_tree(arch, suite) {
        Ok(tree) => tree,
        Err(why) => cannot_run(&why),
    };
    t.mark("Debian tree (cached, or debootstrap)");

    // Two packages: the version under test, and the same one numbered
    // higher to upgrade to.
    let debs = tempfile::Builder::new()
        .prefix("install-debs-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir");
    let deb1 = build_deb(arch, debs.path(), None).unwrap_or_else(|e| panic!("{e}"));
    let version1 = deb_version(&deb1);
    let version2 = format!("{version1}+1");
    let deb2 = build_deb(arch, debs.path(), Some(&version2)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(deb_version(&deb2), version2);
    let in_container = |deb: &Path| {
        format!(
            "{DEBS_IN_CONTAINER}/{}",
            deb.file_name().and_then(|n| n.to_str()).expect("file name")
        )
    };
    let (deb1, deb2) = (in_container(&deb1), in_container(&deb2));
    t.mark("build the two .debs");

    let mut c = match Container::boot(&tree, debs.path()) {
        Ok(c) => c,
        Err(why) => cannot_run(&format!("cannot boot a container: {why}")),
    };
    println!(
        "booted a container ({} of {}), systemd as its PID 1 = host pid {:?}",
        c.root_kind,
        tree.display(),
        c.init
    );
    assert_eq!(
        c.ok(&["cat", "/proc/1/comm"], Duration::from_secs(10)),
        "systemd",
        "PID 1 in the container"
    );
    assert_eq!(
        c.ok(&["dpkg", "--print-architecture"], Duration::from_secs(30)),
        arch,
        "the container's Debian is {arch}"
    );
    let debian_version = c.ok(&["cat", "/etc/debian_version"], Duration::from_secs(10));
    println!("Debian {debian_version} {arch}");
    if suite == Some("bullseye") {
        assert!(
            debian_version.starts_with("11."),
            "bullseye is Debian 11: {debian_version}"
        );
    }
    t.mark("boot to running");

    if arch != "amd64" {
        // Under qemu-user, the emulated systemd cannot set up a user
        // namespace for the service ("Failed to set up user namespacing:
        // Invalid argument", exit 217/USER): qemu's limit, not Debian 11's
        // (the amd64 tests run the unit as shipped, PrivateUsers=yes
        // included, on Debian 11 and 12). Only that one setting is lifted,
        // and the drop-in is the test's, not the package's.
        c.ok(
            &[
                "sh",
                "-c",
                "mkdir -p /etc/systemd/system/slmd.service.d && \
                 printf '%s\\n' '[Service]' 'PrivateUsers=no' \
                 >/etc/systemd/system/slmd.service.d/qemu-user.conf",
            ],
            Duration::from_secs(10),
        );
    }

    // --- install ---------------------------------------------------------
    let long = Duration::from_secs(300);
    let out = c.ok(&["dpkg", "-i", &deb1], long);
    println!("dpkg -i:\n{out}");
    t.mark("dpkg -i (postinst starts slmd)");

    let passwd = c.ok(&["getent", "passwd", "slmd"], Duration::from_secs(10));
    let fields: Vec<&str> = passwd.split(':').collect();
    assert_eq!(fields.len(), 7, "passwd entry: {passwd}");
    let uid: u32 = fields[2].parse().expect("uid");
    assert!(uid < 1000, "a system user: {passwd}");
    assert_eq!(fields[5], "/var/lib/slmd", "home: {passwd}");
    assert!(fields[6].ends_with("nologin"), "no login shell: {passwd}");
    let groups = c.ok(&["id", "-nG", "slmd"], Duration::from_secs(10));
    assert!(
        groups.split_whitespace().any(|g| g == "dialout"),
        "slmd is in dialout: {groups}"
    );
    assert_eq!(
        c.ok(
            &["stat", "-c", "%a %U %G", "/var/lib/slmd"],
            Duration::from_secs(10)
        ),
        "750 slmd slmd"
    );
    assert_eq!(
        c.ok(
            &["systemctl", "is-enabled", "slmd.service"],
            Duration::from_secs(10)
        ),
        "enabled"
    );
    assert_eq!(
        c.property("Type"),
        "notify",
        "active means READY=1 was sent"
    );
    let pid1 = c.wait_active(0, Duration::from_secs(120));
    assert_eq!(c.property("User"), "slmd");
    println!("StatusText: {:?}", c.property("StatusText"));
    let status = c.http_status(8470, "/v1/status");
    assert!(status.contains(" 200"), "GET /v1/status: {status:?}");
    t.mark("service active, API answers");

    // The daemon's own journal entries: native journald, with PRIORITY.
    let entries = slmd_journal(&c);
    assert!(
        !entries.is_empty(),
        "no journal entries with _SYSTEMD_UNIT=slmd.service\n{}",
        c.service_report()
    );
    for e in &entries {
        assert!(e.get("PRIORITY").is_some(), "no PRIORITY: {e}");
    }

    // --- the installer's edit: a meter, and the API on another port -------
    // The meter's address has nothing listening (the container's network
    // is its own), so the daemon reports it down: a warning with the
    // structured fields a field tech filters on.
    c.ok(
        &[
            "sed",
            "-i",
            "-e",
            r#"s/^listen = "127.0.0.1:8470"$/listen = "127.0.0.1:8471"/"#,
            "/etc/slmd/slmd.toml",
        ],
        Duration::from_secs(10),
    );
    c.ok(
        &[
            "sh",
            "-c",
            "printf '%s\\n' '' '# edited by the install test' '[[device]]' 'id = \"install-test-meter\"' \
             'protocol = \"nl43\"' 'transport = \"tcp\"' 'address = \"127.0.0.1:2255\"' >>/etc/slmd/slmd.toml",
        ],
        Duration::from_secs(10),
    );
    let edited = c.ok(&["cat", "/etc/slmd/slmd.toml"], Duration::from_secs(10));
    assert!(
        edited.contains("listen = \"127.0.0.1:8471\"")
            && edited.ends_with("address = \"127.0.0.1:2255\""),
        "the edit took:\n{edited}"
    );
    // As the conffile's header says: reload picks up meters.
    c.ok(
        &["systemctl", "reload", "slmd.service"],
        Duration::from_secs(60),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let (entries, meter_event) = loop {
        let entries = slmd_journal(&c);
        let found = entries
            .iter()
            .find(|e| e["SLMD_DEVICE"] == "install-test-meter" && e.get("SLMD_EVENT").is_some())
            .cloned();
        if found.is_some() || Instant::now() >= deadline {
            break (entries, found);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let events: std::collections::BTreeSet<String> = entries
        .iter()
        .filter_map(|e| e["SLMD_EVENT"].as_str().map(str::to_owned))
        .collect();
    println!("SLMD_EVENT values in the journal: {events:?}");
    let Some(meter_event) = meter_event else {
        panic!(
            "no journal entry with SLMD_DEVICE=install-test-meter and an SLMD_EVENT within 60s of the reload; entries:\n{}",
            entries
                .iter()
                .map(|e| format!(
                    "PRIORITY={} SLMD_EVENT={} SLMD_DEVICE={} {}",
                    e["PRIORITY"], e["SLMD_EVENT"], e["SLMD_DEVICE"], e["MESSAGE"]
                ))
                .collect::<Vec<_>>()
                .join("\n")
        )
    };
    println!("meter event: {meter_event}");
    assert!(
        matches!(meter_event["PRIORITY"].as_str(), Some("3" | "4")),
        "a meter that does not answer is a warning (PRIORITY 4) or an error: {meter_event}"
    );
    assert_eq!(
        c.property("MainPID").parse::<u32>().ok(),
        Some(pid1),
        "reload keeps the process"
    );
    t.mark("edit + reload: journal fields");

    // --- upgrade with the edited conffile ----------------------------------
    let out = c.ok(&["dpkg", "-i", "--force-confold", &deb2], long);
    println!("dpkg -i (upgrade):\n{out}");
    assert_eq!(
        c.ok(
            &["dpkg-query", "-W", "-f", "${Version}", "slmd"],
            Duration::from_secs(10)
        ),
        version2
    );
    assert_eq!(
        c.ok(&["cat", "/etc/slmd/slmd.toml"], Duration::from_secs(10)),
        edited,
        "the upgrade kept the edited conffile"
    );
    let leftovers = c.ok(&["ls", "-A", "/etc/slmd"], Duration::from_secs(10));
    assert_eq!(leftovers, "slmd.toml", "no .dpkg-new/.dpkg-dist beside it");
    let pid2 = c.wait_active(pid1, Duration::from_secs(120));
    println!("MainPID {pid1} -> {pid2} across the upgrade");
    let status = c.http_status(8471, "/v1/status");
    assert!(
        status.contains(" 200"),
        "the restarted daemon listens where the kept config says: {status:?}"
    );
    t.mark("upgrade: conffile kept, restarted");

    // --- remove: data kept ------------------------------------------------
    // The buffer (its -wal and -shm files go away on a clean stop): the
    // same file, same owner, after the remove.
    let buffer = ["stat", "-c", "%i %U %G %a", "/var/lib/slmd/buffer.sqlite"];
    let buffer_before = c.ok(&buffer, Duration::from_secs(10));
    c.ok(&["dpkg", "-r", "slmd"], long);
    assert_eq!(
        c.ok(
            &["dpkg-query", "-W", "-f", "${db:Status-Abbrev}", "slmd"],
            Duration::from_secs(10)
        ),
        "rc",
        "removed, config files kept"
    );
    assert!(!c.test("test -e /usr/bin/slmd"), "binary removed");
    assert_ne!(c.property("ActiveState"), "active", "stopped on remove");
    assert_eq!(
        c.ok(&buffer, Duration::from_secs(10)),
        buffer_before,
        "remove keeps /var/lib/slmd/buffer.sqlite"
    );
    assert_eq!(
        c.ok(
            &["stat", "-c", "%a %U %G", "/var/lib/slmd"],
            Duration::from_secs(10)
        ),
        "750 slmd slmd",
        "remove keeps /var/lib/slmd as it was"
    );
    assert_eq!(
        c.ok(&["cat", "/etc/slmd/slmd.toml"], Duration::from_secs(10)),
        edited,
        "remove keeps the conffile"
    );
    t.mark("dpkg -r: data kept");

    // --- purge: data gone -----------------------------------------------
    c.ok(&["dpkg", "-P", "slmd"], long);
    assert!(
        !c.test("test -e /var/lib/slmd"),
        "purge deletes /var/lib/slmd"
    );
    assert!(!c.test("test -e /etc/slmd"), "purge deletes /etc/slmd");
    assert!(!c.test("dpkg -s slmd >/dev/null 2>&1"), "no trace in dpkg");
    assert!(
        !c.test(
            "test -e /etc/systemd/system/multi-user.target.wants/slmd.service || test -L /etc/systemd/system/multi-user.target.wants/slmd.service || test -L /etc/systemd/system/slmd.service"
        ),
        "purge removes the enablement and the mask"
    );
    assert!(
        c.test("getent passwd slmd >/dev/null"),
        "the system user is kept on purge (packaging/README.md says why)"
    );
    t.mark("dpkg -P: data gone");

    let status = c
        .poweroff(Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("{e}"));
    println!("container exited: {status}");
    t.mark("poweroff");
    println!("{}", t.summary());
}
