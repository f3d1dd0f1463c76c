//! The Debian packages under test: built by `packaging/build-deb.sh` for
//! one architecture, taken apart with `dpkg-deb`, read with `readelf`, and
//! judged by lintian. Shared by the packaging, ARM and install tests.
//!
//! The tests that use this are `#[ignore]`d in a plain `cargo test` (they
//! need the package tools, see [`crate::needs`]); each first requires the
//! tools it uses, and fails naming any that is missing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_owned()
}

/// The cargo target directory, from the running test executable's path
/// (`<target>/<profile>/deps/<test>`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors()
        .nth(3)
        .expect("target/<profile>/deps layout")
        .to_owned()
}

/// `<target>/tmp`, where cargo puts integration tests' scratch files.
pub fn target_tmp() -> PathBuf {
    target_dir().join("tmp")
}

pub use crate::needs::have;

/// The tools `build-deb.sh` needs on every architecture (it installs the
/// cross compilers and qemu-user itself, as root, when missing).
pub const BUILD_TOOLS: [&str; 8] = [
    "bash", "dpkg", "dpkg-deb", "gzip", "md5sum", "readelf", "apt-get", "gcc",
];

/// Runs `cmd`; panics when it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    let name = format!("{cmd:?}");
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"))
}

/// stdout of `cmd`, which must succeed.
pub fn stdout(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds `slmd_<version>_<arch>.deb` into `out` with
/// `packaging/build-deb.sh --arch <arch>`; its path.
pub fn build_deb(arch: &str, out: &Path, version: Option<&str>) -> Result<PathBuf, String> {
    let mut cmd = Command::new("bash");
    cmd.arg(workspace().join("packaging/build-deb.sh"))
        .args(["--arch", arch, "--out"])
        .arg(out)
        .current_dir(workspace());
    if let Some(v) = version {
        cmd.args(["--version", v]);
    }
    // The script runs `cargo`: the one running these tests.
    if let Some(cargo_dir) = std::env::var_os("CARGO")
        .map(PathBuf::from)
        .and_then(|c| c.parent().map(Path::to_owned))
    {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let joined =
            std::env::join_paths(std::iter::once(cargo_dir).chain(std::env::split_paths(&path)))
                .map_err(|e| e.to_string())?;
        cmd.env("PATH", joined);
    }
    let done = cmd
        .output()
        .map_err(|e| format!("cannot run build-deb.sh: {e}"))?;
    if !done.status.success() {
        return Err(format!(
            "build-deb.sh --arch {arch} failed ({}):\n{}",
            done.status,
            String::from_utf8_lossy(&done.stderr)
        ));
    }
    let deb = PathBuf::from(
        String::from_utf8_lossy(&done.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim(),
    );
    if !deb.is_file() {
        return Err(format!(
            "build-deb.sh did not print the .deb's path: {}",
            deb.display()
        ));
    }
    Ok(deb)
}

/// A package and its two halves unpacked.
pub struct Unpacked {
    /// The .deb.
    pub deb: PathBuf,
    /// `dpkg-deb -x`: the files.
    pub root: PathBuf,
    /// `dpkg-deb -e`: the control files.
    pub control: PathBuf,
}

impl Unpacked {
    /// The control file's fields.
    pub fn fields(&self) -> BTreeMap<String, String> {
        control_fields(
            &std::fs::read_to_string(self.control.join("control")).expect("DEBIAN/control"),
        )
    }

    /// The packaged binary.
    pub fn binary(&self) -> PathBuf {
        self.root.join("usr/bin/slmd")
    }
}

/// Builds the package for `arch` into a fresh `<target>/tmp/<name>` (left
/// there for a look after a failure) and unpacks it.
pub fn build_and_unpack(arch: &str, name: &str) -> Result<Unpacked, String> {
    let dir = target_tmp().join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("clean {}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let deb = build_deb(arch, &dir, None)?;
    let root = dir.join("root");
    let control = dir.join("control");
    for (flag, into) in [("-x", &root), ("-e", &control)] {
        let out = Command::new("dpkg-deb")
            .arg(flag)
            .arg(&deb)
            .arg(into)
            .output()
            .map_err(|e| format!("dpkg-deb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "dpkg-deb {flag} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(Unpacked { deb, root, control })
}

/// `Key: value` fields of a control file (continuation lines appended).
pub fn control_fields(text: &str) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut last = None;
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(key) = &last {
                let value = out.get_mut(key).expect("key seen");
                value.push('\n');
                value.push_str(line);
            }
        } else if let Some((key, value)) = line.split_once(':') {
            out.insert(key.to_owned(), value.trim().to_owned());
            last = Some(key.to_owned());
        }
    }
    out
}

/// A version as numbers (`2.31` → `[2, 31]`), for comparing.
pub fn version_numbers(v: &str) -> Vec<u64> {
    v.split('.').filter_map(|p| p.parse().ok()).collect()
}

/// The newest `GLIBC_x.y` symbol version `binary` needs, read with
/// `readelf` (which reads every architecture's ELF).
pub fn newest_glibc_symbol(binary: &Path) -> String {
    let syms = stdout(
        Command::new("readelf")
            .args(["-W", "--dyn-syms"])
            .arg(binary),
    );
    syms.split('@')
        .filter_map(|s| s.strip_prefix("GLIBC_"))
        .map(|s| {
            s.chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect::<String>()
        })
        .max_by_key(|v| version_numbers(v))
        .unwrap_or_else(|| panic!("{} uses no GLIBC_ symbol", binary.display()))
}

/// The ELF header's `Machine:` line, e.g. `AArch64`.
pub fn elf_machine(binary: &Path) -> String {
    stdout(Command::new("readelf").arg("-h").arg(binary))
        .lines()
        .find_map(|l| l.trim().strip_prefix("Machine:"))
        .map(|m| m.trim().to_owned())
        .unwrap_or_default()
}

/// Runs lintian on `deb` and asserts no errors and only warnings that
/// `packaging/README.md` explains (by their tag in backquotes).
pub fn assert_lintian_clean(deb: &Path) {
    let out = run(Command::new("lintian")
        .args(["--fail-on", "error", "--display-info", "--show-overrides"])
        .arg(deb));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("lintian {}:\n{report}", deb.display());
    assert!(out.status.success(), "lintian found errors:\n{report}");
    assert!(
        !report.lines().any(|l| l.starts_with("E: ")),
        "lintian errors:\n{report}"
    );
    let readme =
        std::fs::read_to_string(workspace().join("packaging/README.md")).expect("README.md");
    for line in report.lines().filter(|l| l.starts_with("W: ")) {
        let tag = line.split_whitespace().nth(2).unwrap_or_default();
        assert!(
            readme.contains(&format!("`{tag}`")),
            "lintian warning not explained in packaging/README.md: {line}"
        );
    }
}

/// Byte strings that only the HIL kit's simulators (the `slmd-hil` crate)
/// put into a binary: its source paths (panic locations, log call sites,
/// line tables), its crate name (symbols, the demo's log filter), and
/// messages of the simulated meter (sessions, TCP and pty links) and of the
/// simulated fleet (its admin routes, its fault injection).
pub const SIMULATOR_MARKERS: [&str; 7] = [
    "hil/src/",
    "slmd_hil",
    "partial command dropped: its bytes came more than 100 ms apart",
    "client refused: another one is connected",
    "pty meter ready",
    "/admin/poison",
    "injected fault",
];

/// Which of [`SIMULATOR_MARKERS`] occur in `binary` (`grep -a`: fast on a
/// binary of hundreds of MB, where a byte loop in a debug test is not).
pub fn simulator_markers_in(binary: &Path) -> std::collections::BTreeSet<String> {
    let mut grep = Command::new("grep");
    grep.env("LC_ALL", "C").args(["-a", "-o", "-F"]);
    for marker in SIMULATOR_MARKERS {
        grep.arg("-e").arg(marker);
    }
    let out = run(grep.arg(binary));
    // 0: found some; 1: found none; anything else: grep failed.
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "grep on {} failed ({}): {}",
        binary.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// glibc of Debian 11, the oldest system the packages promise to run on.
pub const GLIBC_BASELINE: &str = "2.31";

/// Asserts that the package's `Depends: libc6 (>= x.y)` is the newest
/// glibc symbol version its binary needs, and that this is at most
/// Debian 11's [`GLIBC_BASELINE`]: the line is true, and the package
/// installs where it promises to.
pub fn assert_glibc_baseline(package: &Unpacked) {
    let fields = package.fields();
    let depends = fields.get("Depends").cloned().unwrap_or_default();
    let needed = newest_glibc_symbol(&package.binary());
    assert!(
        depends
            .split(',')
            .any(|d| d.trim() == format!("libc6 (>= {needed})")),
        "Depends says libc6 (>= {needed}), the newest GLIBC_ symbol the binary uses: {depends}"
    );
    assert!(
        version_numbers(&needed) <= version_numbers(GLIBC_BASELINE),
        "the binary needs glibc {needed}, newer than Debian 11's {GLIBC_BASELINE}"
    );
}
