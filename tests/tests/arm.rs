//! The ARM packages, arm64 and armhf: built on this amd64 machine by
//! `packaging/build-deb.sh --arch <arch>` (once per test run, into
//! `target/tmp/arm-<arch>`), then proven to run under qemu-user against
//! Debian 11's C library (the sysroot `packaging/cross-setup.sh` fetched,
//! given to qemu with `-L`): the ELF machine, the glibc baseline and the
//! `Depends` line, the stripped size, lintian, no simulator inside,
//! `slmd --version`, `slmd check --no-probe` on the packaged configuration,
//! and a run of about 10 seconds in which the ARM daemon reads `slm-sim`
//! over TCP and over a pty and pushes to `fleet-sim`: every record arrives,
//! in order.
//!
//! The simulators and the fleet are this machine's own (amd64) binaries:
//! the daemon is the only thing under emulation, as it would be the only
//! thing on the gateway. One concession to emulation: qemu-user does not
//! translate the termios2 ioctls the serial crate configures a port with
//! (qemu 7.2 answers ENOSYS, 10.0 ENOTTY), so for the serial meter the
//! daemon runs with `tests/qemu/termios2-shim.c` preloaded, which turns
//! them into the plain termios ioctls qemu does translate. A gateway's
//! kernel handles termios2 itself; the shim is never shipped.
//!
//! Every test here is `#[ignore]`d in a plain `cargo test`: they need the
//! ARM cross compilers, Debian's rustc-web and Debian 11's C library
//! (fetched with apt), qemu-user, and lintian. `.ci/run` installs them and
//! runs these tests (`-- --include-ignored`); a missing tool fails them,
//! naming it.

use serde_json::Value;
use slmd_e2e::deb::{
    BUILD_TOOLS, Unpacked, assert_glibc_baseline, assert_lintian_clean, build_and_unpack,
    elf_machine, simulator_markers_in, target_dir, target_tmp, workspace,
};
use slmd_e2e::fleet::{FleetSim, fleet_section};
use slmd_e2e::needs::require_tools;
use slmd_e2e::{
    Daemon, Proc, Setup, Sim, assert_records_match_answers, poll_until, serial_device, tcp_device,
};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(120);
const GATEWAY: &str = "gw-test";

/// An ARM architecture under test.
struct Arch {
    /// Debian's name.
    deb: &'static str,
    /// `readelf -h`'s machine.
    machine: &'static str,
    /// The qemu-user binary that runs it.
    qemu: &'static str,
    /// Rust's target (the build's compiler wrappers are named after it).
    triple: &'static str,
    /// The most the stripped binary may weigh (the gateway's flash is
    /// small; `packaging/README.md` gives the measured sizes).
    max_binary_bytes: u64,
}

const ARM64: Arch = Arch {
    deb: "arm64",
    machine: "AArch64",
    qemu: "qemu-aarch64",
    triple: "aarch64-unknown-linux-gnu",
    max_binary_bytes: 8 * 1024 * 1024,
};

const ARMHF: Arch = Arch {
    deb: "armhf",
    machine: "ARM",
    qemu: "qemu-arm",
    triple: "armv7-unknown-linux-gnueabihf",
    max_binary_bytes: 8 * 1024 * 1024,
};

impl Arch {
    /// The package, built and unpacked once per test run (the test fails
    /// when this machine lacks a tool the build needs).
    fn package(&self) -> &'static Unpacked {
        static ARM64_PKG: OnceLock<Result<Unpacked, String>> = OnceLock::new();
        static ARMHF_PKG: OnceLock<Result<Unpacked, String>> = OnceLock::new();
        require_tools(&BUILD_TOOLS);
        let cell = if self.deb == "arm64" {
            &ARM64_PKG
        } else {
            &ARMHF_PKG
        };
        match cell.get_or_init(|| build_and_unpack(self.deb, &format!("arm-{}", self.deb))) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    /// Debian 11's C library for this architecture, as fetched by
    /// `cross-setup.sh` (the build above made sure it is there).
    fn sysroot(&self) -> PathBuf {
        target_dir().join("cross/sysroot").join(self.deb)
    }

    /// `qemu-<arch> -L <sysroot> <binary>`: the ARM binary, run here.
    fn command(&self, package: &Unpacked) -> Command {
        let mut cmd = Command::new(self.qemu);
        cmd.arg("-L").arg(self.sysroot()).arg(package.binary());
        cmd
    }

    /// [`Arch::command`] with the termios2 shim preloaded (see the module
    /// doc), built once per test run with the package's own C compiler.
    fn command_with_serial(&self, package: &Unpacked) -> Command {
        static ARM64_SHIM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
        static ARMHF_SHIM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
        let cell = if self.deb == "arm64" {
            &ARM64_SHIM
        } else {
            &ARMHF_SHIM
        };
        let shim = cell
            .get_or_init(|| self.build_shim())
            .as_ref()
            .unwrap_or_else(|e| panic!("{e}"));
        let mut cmd = Command::new(self.qemu);
        let mut preload = std::ffi::OsString::from("LD_PRELOAD=");
        preload.push(shim);
        cmd.arg("-E")
            .arg(preload)
            .arg("-L")
            .arg(self.sysroot())
            .arg(package.binary());
        cmd
    }

    fn build_shim(&self) -> Result<PathBuf, String> {
        let gcc = target_dir()
            .join("cross/bin")
            .join(format!("{}-gcc-glibc2.31", self.triple));
        let source = workspace().join("tests/qemu/termios2-shim.c");
        let out = target_tmp().join(format!("termios2-shim-{}.so", self.deb));
        let done = Command::new(&gcc)
            .args([
                "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-o",
            ])
            .arg(&out)
            .arg(&source)
            .arg("-ldl")
            .output()
            .map_err(|e| format!("cannot run {}: {e}", gcc.display()))?;
        if !done.status.success() {
            return Err(format!(
                "building the termios2 shim failed:\n{}",
                String::from_utf8_lossy(&done.stderr)
            ));
        }
        Ok(out)
    }
}

fn binary_is_for_the_architecture_and_debian_11(arch: &Arch) {
    require_tools(&["lintian"]);
    let p = arch.package();
    assert_eq!(elf_machine(&p.binary()), arch.machine);
    let fields = p.fields();
    assert_eq!(
        fields.get("Architecture").map(String::as_str),
        Some(arch.deb)
    );
    assert!(
        p.deb
            .to_string_lossy()
            .ends_with(&format!("_{}.deb", arch.deb)),
        "{}",
        p.deb.display()
    );
    assert_glibc_baseline(p);
    let size = std::fs::metadata(p.binary()).expect("binary").len();
    println!(
        "{}: binary {size} bytes stripped, package {} bytes",
        arch.deb,
        std::fs::metadata(&p.deb).expect("deb").len()
    );
    assert!(
        size <= arch.max_binary_bytes,
        "{} binary is {size} bytes, over {}",
        arch.deb,
        arch.max_binary_bytes
    );
    assert_lintian_clean(&p.deb);
    // Built without the demo, as for amd64 (tests/tests/packaging.rs shows
    // the markers are in a build with it).
    let simulators = simulator_markers_in(&p.binary());
    assert!(
        simulators.is_empty(),
        "the {} package's binary carries simulator code: {simulators:?}",
        arch.deb
    );
}

fn runs_version_and_check_under_qemu(arch: &Arch) {
    require_tools(&[arch.qemu]);
    let p = arch.package();
    let out = arch
        .command(p)
        .arg("--version")
        .output()
        .expect("qemu-user");
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "slmd --version under {}", arch.qemu);
    assert!(
        version.starts_with("slmd "),
        "--version printed {version:?}"
    );

    let config = p.root.join("etc/slmd/slmd.toml");
    let out = arch
        .command(p)
        .args(["check", "--no-probe", "--config"])
        .arg(&config)
        .output()
        .expect("qemu-user");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "slmd check --no-probe on the packaged config ({}):\n{text}",
        out.status
    );
}

/// The ARM daemon reads a TCP meter and a serial (pty) meter and pushes to
/// the fleet for about ten seconds; every record it stored reaches the
/// fleet once, in seq order, with the values the meters sent.
fn reads_tcp_and_pty_meters_and_pushes_everything_in_order(arch: &Arch) {
    require_tools(&[arch.qemu]);
    let p = arch.package();
    let fleet = FleetSim::start("token1", &[]);
    let tcp = Sim::tcp(&["--seed", "1101"]);
    let setup = Setup::new();
    let link = setup.path("meter-pty");
    let pty = Sim::pty(&link, &["--seed", "1102"]);
    let config = setup.config(&format!(
        "{}\n{}\n{}",
        tcp_device("arm-tcp", tcp.address.as_deref().expect("address"), ""),
        serial_device("arm-pty", &link, ""),
        fleet_section(&fleet.url(), &["token1"], "")
    ));
    let mut cmd = arch.command_with_serial(p);
    cmd.arg("run")
        .arg("--config")
        .arg(&config)
        .args(["--print", "jsonl"])
        .env("RUST_LOG", "slmd=debug,info");
    let started = Instant::now();
    let mut daemon = Daemon {
        proc: Proc::spawn(cmd),
    };

    // About ten seconds of readings from each meter (one a second).
    let per_meter = 10;
    for device in ["arm-tcp", "arm-pty"] {
        let got = daemon.records(device, per_meter, TIMEOUT).len();
        assert!(
            got >= per_meter,
            "{device}: {got} records within {TIMEOUT:?}\n{}",
            daemon.proc.transcript()
        );
    }
    let ran = started.elapsed();

    // Everything stored so far reaches the fleet.
    let stored: Vec<u64> = daemon
        .printed_records()
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .collect();
    let last = *stored.iter().max().expect("records");
    let arrived = poll_until(TIMEOUT, || {
        let seqs = fleet.seqs(GATEWAY);
        (seqs.iter().filter(|s| **s <= last).count() as u64 >= last).then_some(seqs)
    });
    let status = daemon.proc.terminate(TIMEOUT);
    let transcript = daemon.proc.transcript();
    let Some(seqs) = arrived else {
        panic!(
            "the fleet did not get seqs 1..={last}: {:?}\n{transcript}",
            fleet.seqs(GATEWAY)
        );
    };
    assert!(
        status.is_some_and(|s| s.success()),
        "clean stop: {status:?}\n{transcript}"
    );
    println!(
        "{}: {} records in {:.1}s under {}, {} at the fleet",
        arch.deb,
        stored.len(),
        ran.as_secs_f64(),
        arch.qemu,
        seqs.len()
    );

    // In order, no gap, no duplicate: the fleet's first arrivals are
    // exactly 1..=n.
    let n = *seqs.last().expect("seqs");
    assert!(n >= last);
    assert_eq!(
        seqs,
        (1..=n).collect::<Vec<u64>>(),
        "fleet arrival order\n{transcript}"
    );
    assert_eq!(fleet.stats()["out_of_order"], 0);

    // The values are the meters' own: each device's records, at the fleet,
    // match what its simulator sent, in order.
    let received = fleet.received(GATEWAY);
    for (device, sim) in [("arm-tcp", &tcp), ("arm-pty", &pty)] {
        let records: Vec<Value> = received
            .iter()
            .filter(|r| r["device"] == device)
            .cloned()
            .collect();
        assert!(
            records.len() >= per_meter,
            "{device}: {} records at the fleet",
            records.len()
        );
        assert_records_match_answers(&records, &sim.dod_lines());
    }
}

#[test]
#[ignore = "needs ARM cross compilers, rustc-web, qemu-user, lintian (apt, network); .ci/run installs them"]
fn arm64_binary_is_for_arm64_and_debian_11() {
    binary_is_for_the_architecture_and_debian_11(&ARM64);
}

#[test]
#[ignore = "needs ARM cross compilers, rustc-web, qemu-user, lintian (apt, network); .ci/run installs them"]
fn armhf_binary_is_for_armhf_and_debian_11() {
    binary_is_for_the_architecture_and_debian_11(&ARMHF);
}

#[test]
#[ignore = "needs ARM cross compilers, rustc-web, qemu-user (apt, network); .ci/run installs them"]
fn arm64_runs_version_and_check_under_qemu() {
    runs_version_and_check_under_qemu(&ARM64);
}

#[test]
#[ignore = "needs ARM cross compilers, rustc-web, qemu-user (apt, network); .ci/run installs them"]
fn armhf_runs_version_and_check_under_qemu() {
    runs_version_and_check_under_qemu(&ARMHF);
}

#[test]
#[ignore = "needs ARM cross compilers, rustc-web, qemu-user (apt, network); .ci/run installs them"]
fn arm64_reads_tcp_and_pty_meters_and_pushes_everything_in_order() {
    reads_tcp_and_pty_meters_and_pushes_everything_in_order(&ARM64);
}

#[test]
#[ignore = "needs ARM cross compilers, rustc-web, qemu-user (apt, network); .ci/run installs them"]
fn armhf_reads_tcp_and_pty_meters_and_pushes_everything_in_order() {
    reads_tcp_and_pty_meters_and_pushes_everything_in_order(&ARMHF);
}
