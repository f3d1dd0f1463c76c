//! The Debian package: built once per test run by `packaging/build-deb.sh`
//! (into `target/tmp/packaging`, left there for a look after a failure),
//! then taken apart with `dpkg-deb`: the file list and modes, conffiles,
//! control fields, maintainer scripts, the shipped configuration run
//! through the packaged `slmd check`, that the packaged binary carries no
//! simulator, and lintian.
//!
//! Every test here is `#[ignore]`d in a plain `cargo test`: building the
//! package needs the Debian package tools and Debian 11's C library
//! (`packaging/cross-setup.sh` fetches it with apt). `.ci/run` runs them
//! (`-- --include-ignored`); a missing tool fails them, naming it.

use slmd_e2e::bin;
use slmd_e2e::deb::{
    BUILD_TOOLS, SIMULATOR_MARKERS, Unpacked, assert_glibc_baseline, assert_lintian_clean,
    build_and_unpack, control_fields as fields, run, simulator_markers_in, stdout, target_dir,
    workspace,
};
use slmd_e2e::needs::require_tools;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

/// The amd64 package, built once per test run.
fn built() -> &'static Unpacked {
    static BUILT: OnceLock<Result<Unpacked, String>> = OnceLock::new();
    require_tools(&BUILD_TOOLS);
    match BUILT.get_or_init(|| build_and_unpack("amd64", "packaging")) {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    }
}

/// The workspace's version, from `[workspace.package]` in Cargo.toml.
fn workspace_version() -> String {
    let text = std::fs::read_to_string(workspace().join("Cargo.toml")).expect("Cargo.toml");
    let mut in_package = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[workspace.package]";
        } else if in_package {
            if let Some(rest) = line.strip_prefix("version") {
                let value = rest.trim_start().trim_start_matches('=').trim();
                return value.trim_matches('"').replace('-', "~");
            }
        }
    }
    panic!("no version in [workspace.package]")
}

fn arch() -> String {
    "amd64".to_owned()
}

/// README.md is shipped compressed when over 4 KiB (policy 12.3).
fn readme_name() -> &'static str {
    let len = std::fs::metadata(workspace().join("README.md"))
        .expect("README.md")
        .len();
    if len > 4096 {
        "README.md.gz"
    } else {
        "README.md"
    }
}

#[test]
#[ignore = "needs dpkg-deb and Debian 11's C library (apt, network); .ci/run installs them"]
fn file_list_owners_and_modes() {
    let b = built();
    let listing = stdout(Command::new("dpkg-deb").arg("-c").arg(&b.deb));
    let mut files = BTreeMap::new();
    for line in listing.lines() {
        // drwxr-xr-x root/root         0 2026-11-23 12:37 ./etc/
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert!(cols.len() >= 6, "unexpected dpkg-deb -c line: {line}");
        let (mode, owner, path) = (cols[0], cols[1], cols[5]);
        assert_eq!(owner, "root/root", "every file belongs to root: {line}");
        if mode.starts_with('d') {
            assert_eq!(mode, "drwxr-xr-x", "directory mode: {line}");
        } else {
            files.insert(path.to_owned(), mode.to_owned());
        }
    }
    let readme = format!("./usr/share/doc/slmd/{}", readme_name());
    let expected: BTreeMap<String, String> = [
        ("./usr/bin/slmd", "-rwxr-xr-x"),
        ("./lib/systemd/system/slmd.service", "-rw-r--r--"),
        ("./etc/slmd/slmd.toml", "-rw-r--r--"),
        ("./usr/share/man/man8/slmd.8.gz", "-rw-r--r--"),
        (readme.as_str(), "-rw-r--r--"),
        ("./usr/share/doc/slmd/README.Debian", "-rw-r--r--"),
        ("./usr/share/doc/slmd/changelog.gz", "-rw-r--r--"),
        ("./usr/share/doc/slmd/copyright", "-rw-r--r--"),
        (
            "./usr/share/doc/slmd/examples/99-slmd-serial.rules",
            "-rw-r--r--",
        ),
        ("./usr/share/lintian/overrides/slmd", "-rw-r--r--"),
    ]
    .into_iter()
    .map(|(p, m)| (p.to_owned(), m.to_owned()))
    .collect();
    assert_eq!(files, expected, "files and modes in the package");

    let name = b.deb.file_name().and_then(|n| n.to_str()).unwrap_or("");
    assert_eq!(
        name,
        format!("slmd_{}_{}.deb", workspace_version(), arch()),
        "file name"
    );
    // The unit is the repository's, unchanged.
    assert_eq!(
        std::fs::read(b.root.join("lib/systemd/system/slmd.service")).expect("unit"),
        std::fs::read(workspace().join("systemd/slmd.service")).expect("systemd/slmd.service"),
    );
    // The binary is stripped: no symbol table left.
    let sections = stdout(
        Command::new("readelf")
            .arg("-S")
            .arg(b.root.join("usr/bin/slmd")),
    );
    assert!(
        !sections.contains(".symtab"),
        "usr/bin/slmd is not stripped"
    );
    // (.debug_gdb_scripts is loaded data, not debug info.)
    for debug in [".debug_info", ".debug_line"] {
        assert!(!sections.contains(debug), "usr/bin/slmd has {debug}");
    }
}

#[test]
#[ignore = "needs dpkg-deb and Debian 11's C library (apt, network); .ci/run installs them"]
fn conffiles_and_the_shipped_config() {
    let b = built();
    let conffiles = std::fs::read_to_string(b.control.join("conffiles")).expect("conffiles");
    assert_eq!(conffiles, "/etc/slmd/slmd.toml\n");
    let shipped = std::fs::read_to_string(b.root.join("etc/slmd/slmd.toml")).expect("slmd.toml");
    assert_eq!(
        shipped,
        std::fs::read_to_string(workspace().join("packaging/slmd.toml")).expect("source"),
    );
    let active: Vec<&str> = shipped
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(
        active.contains(&"listen = \"127.0.0.1:8470\""),
        "API on loopback: {active:?}"
    );
    assert!(active.contains(&"enabled = false"), "fleet off: {active:?}");
    assert!(
        !active.iter().any(|l| l.starts_with("[[device]]")),
        "no active meter: {active:?}"
    );
    assert!(
        shipped.contains("# [[device]]"),
        "one commented example meter"
    );
}

/// Runs the packaged `slmd check` on `config`; `Ok` when the file is
/// valid: exit 0, or a probe failure (69) after the line saying it is valid.
fn check(b: &Unpacked, config: &Path, extra: &[&str]) -> Result<String, String> {
    let out = run(Command::new(b.root.join("usr/bin/slmd"))
        .arg("check")
        .args(extra)
        .arg("--config")
        .arg(config));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => Ok(text),
        Some(69) if text.contains("valid") => Ok(text),
        _ => Err(format!("{}: {text}", out.status)),
    }
}

#[test]
#[ignore = "needs dpkg-deb and Debian 11's C library (apt, network); .ci/run installs them"]
fn the_shipped_config_passes_slmd_check() {
    let b = built();
    let config = b.root.join("etc/slmd/slmd.toml");
    if let Err(e) = check(b, &config, &[]) {
        panic!("slmd check on the shipped slmd.toml: {e}");
    }

    // The example meter, uncommented as a field tech would ("# key" lines
    // of the [[device]] block; "# # ..." lines stay comments), is valid too.
    let text = std::fs::read_to_string(&config).expect("slmd.toml");
    let mut out = String::new();
    let mut in_device = false;
    for line in text.lines() {
        if line == "# [[device]]" {
            in_device = true;
        } else if line.starts_with('[') {
            in_device = false;
        }
        match line.strip_prefix("# ") {
            Some(rest) if in_device && !rest.starts_with('#') => out.push_str(rest),
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    assert!(out.contains("\n[[device]]\n"), "uncommented:\n{out}");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("slmd.toml");
    std::fs::write(&path, &out).expect("write");
    let help = run(Command::new(b.root.join("usr/bin/slmd")).args(["check", "--help"]));
    let no_probe: &[&str] = if String::from_utf8_lossy(&help.stdout).contains("--no-probe") {
        &["--no-probe"]
    } else {
        &[]
    };
    if let Err(e) = check(b, &path, no_probe) {
        panic!("slmd check with the example meter uncommented: {e}\n{out}");
    }
}

#[test]
#[ignore = "needs dpkg-deb and Debian 11's C library (apt, network); .ci/run installs them"]
fn control_fields() {
    let b = built();
    let info = stdout(Command::new("dpkg-deb").arg("-f").arg(&b.deb));
    let f = fields(&info);
    let get = |k: &str| {
        f.get(k)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no {k} field in:\n{info}"))
    };
    assert_eq!(get("Package"), "slmd");
    assert_eq!(get("Version"), workspace_version());
    assert_eq!(get("Architecture"), arch());
    assert!(
        matches!(get("Section"), "net" | "misc"),
        "Section: {}",
        get("Section")
    );
    assert_eq!(get("Priority"), "optional");
    let maintainer = get("Maintainer");
    assert!(
        maintainer.contains('<') && maintainer.ends_with('>') && maintainer.contains('@'),
        "Maintainer: {maintainer}"
    );
    let depends = get("Depends");
    assert!(depends.contains("libc6 (>= 2."), "Depends: {depends}");
    assert_glibc_baseline(built());
    assert!(
        depends.split(',').any(|d| d.trim() == "adduser"),
        "postinst runs adduser: {depends}"
    );
    let unit =
        std::fs::read_to_string(workspace().join("systemd/slmd.service")).expect("unit file");
    if unit.contains("/bin/kill ") {
        assert!(
            depends.split(',').any(|d| d.trim() == "procps"),
            "the unit runs /bin/kill (procps): {depends}"
        );
    }
    let installed: u64 = get("Installed-Size")
        .parse()
        .expect("Installed-Size in KiB");
    let binary = std::fs::metadata(b.root.join("usr/bin/slmd"))
        .expect("binary")
        .len();
    assert!(
        installed >= binary / 1024 && installed < binary / 1024 + 200,
        "Installed-Size {installed} KiB for a {binary}-byte binary"
    );
    let description = get("Description");
    let mut lines = description.lines();
    let synopsis = lines.next().unwrap_or_default();
    assert!(
        !synopsis.is_empty() && synopsis.len() <= 80,
        "short description: {synopsis:?}"
    );
    let long: Vec<&str> = lines.collect();
    assert!(long.len() >= 3, "long description:\n{description}");
    assert!(long.iter().all(|l| l.len() <= 80), "lines ≤ 80 columns");
}

#[test]
#[ignore = "needs dpkg-deb and Debian 11's C library (apt, network); .ci/run installs them"]
fn maintainer_scripts() {
    let b = built();
    let mut scripts = BTreeMap::new();
    for name in ["postinst", "prerm", "postrm"] {
        let path = b.control.join(name);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path)
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o755, "{name} mode {mode:o}");
        let text = std::fs::read_to_string(&path).expect("script");
        assert!(text.starts_with("#!/bin/sh\n"), "{name}: POSIX sh");
        assert!(text.lines().any(|l| l.trim() == "set -e"), "{name}: set -e");
        let syntax = run(Command::new("sh").arg("-n").arg(&path));
        assert!(
            syntax.status.success(),
            "sh -n {name}: {}",
            String::from_utf8_lossy(&syntax.stderr)
        );
        // bash in POSIX mode catches some constructs dash accepts.
        let posix = run(Command::new("bash").args(["--posix", "-n"]).arg(&path));
        assert!(posix.status.success(), "bash --posix -n {name}");
        scripts.insert(name, text);
    }
    // No other maintainer scripts (preinst would be unexpected here).
    let mut extra: Vec<String> = std::fs::read_dir(&b.control)
        .expect("control dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    extra.sort();
    assert_eq!(
        extra,
        [
            "conffiles",
            "control",
            "md5sums",
            "postinst",
            "postrm",
            "prerm"
        ]
    );

    let postinst = &scripts["postinst"];
    for needle in [
        "adduser --system",
        "useradd --system",
        "--home \"$state_dir\" --no-create-home",
        "dialout",
        "state_dir=/var/lib/slmd",
        "mkdir -m 0750 \"$state_dir\"",
        "chown \"$user:$user\" \"$state_dir\"",
        "deb-systemd-helper enable",
        "[ -d /run/systemd/system ]",
        "action=restart",
        "action=start",
    ] {
        assert!(postinst.contains(needle), "postinst lacks {needle:?}");
    }
    let prerm = &scripts["prerm"];
    assert!(prerm.contains("\"$1\" = \"remove\"") && prerm.contains("stop \"$unit\""));
    let postrm = &scripts["postrm"];
    assert!(postrm.contains("\"$1\" = \"purge\""));
    assert!(postrm.contains("rm -rf \"$state_dir\""));
    assert!(postrm.contains("deb-systemd-helper purge"));
    // Data is deleted only on purge: the rm is inside the purge branch.
    let purge_at = postrm.find("\"$1\" = \"purge\"").expect("purge branch");
    assert!(postrm.find("rm -rf").expect("rm") > purge_at);
}

/// `gzip -9n`: no file name and no time stamp in the header, so the
/// package is reproducible.
#[test]
#[ignore = "needs dpkg-deb and Debian 11's C library (apt, network); .ci/run installs them"]
fn compressed_files_are_gzip_n_and_the_man_page_is_slmd_8() {
    let b = built();
    for rel in [
        "usr/share/man/man8/slmd.8.gz".to_owned(),
        "usr/share/doc/slmd/changelog.gz".to_owned(),
        format!("usr/share/doc/slmd/{}", readme_name()),
    ] {
        if !rel.ends_with(".gz") {
            continue;
        }
        let bytes = std::fs::read(b.root.join(&rel)).expect(&rel);
        assert!(
            bytes.len() > 10 && bytes[..3] == [0x1f, 0x8b, 8],
            "{rel}: gzip"
        );
        assert_eq!(bytes[3] & 0x08, 0, "{rel}: no file name (gzip -n)");
        assert_eq!(bytes[4..8], [0, 0, 0, 0], "{rel}: no time stamp (gzip -n)");
    }
    let page = stdout(
        Command::new("gzip")
            .arg("-dc")
            .arg(b.root.join("usr/share/man/man8/slmd.8.gz")),
    );
    assert!(
        page.lines().any(|l| l.starts_with(".TH slmd 8")),
        "slmd(8):\n{page}"
    );
    // One page: each subcommand has its own section, no slmd-run(8) refs.
    for subcommand in ["RUN", "CHECK", "STATUS", "DEMO"] {
        assert!(
            page.contains(&format!(".SH \"SLMD {subcommand}\"")),
            "slmd(8) has a section for {subcommand}:\n{page}"
        );
    }
    assert!(
        !page.contains("slmd\\-run(8)"),
        "no page of its own is referred to"
    );
    let changelog = stdout(
        Command::new("gzip")
            .arg("-dc")
            .arg(b.root.join("usr/share/doc/slmd/changelog.gz")),
    );
    assert!(
        changelog.starts_with(&format!("slmd ({}) ", workspace_version())),
        "changelog entry for this version:\n{changelog}"
    );
    let copyright =
        std::fs::read_to_string(b.root.join("usr/share/doc/slmd/copyright")).expect("copyright");
    assert!(copyright.starts_with(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
    ));
    assert!(copyright.contains("\nLicense: MIT or Apache-2.0\n"));
    let rule = std::fs::read_to_string(
        b.root
            .join("usr/share/doc/slmd/examples/99-slmd-serial.rules"),
    )
    .expect("udev rule");
    assert!(rule.contains("GROUP=\"dialout\""));
}

#[test]
#[ignore = "needs lintian, dpkg-deb and Debian 11's C library; .ci/run installs them"]
fn lintian_reports_no_errors_and_only_explained_warnings() {
    require_tools(&["lintian"]);
    assert_lintian_clean(&built().deb);
}

/// The package ships the daemon only: no simulated meter, no simulated
/// fleet. Its `slmd demo` exits 69 saying so and how to run the demo from
/// source, and `--help` and slmd(8) say the same.
#[test]
#[ignore = "needs dpkg-deb and Debian 11's C library (apt, network); .ci/run installs them"]
fn the_packaged_binary_carries_no_simulator_and_its_demo_says_so() {
    // The markers do identify the simulators: a build with the demo (the
    // default features) holds every one of them.
    let with_demo = bin("slmd");
    let found = simulator_markers_in(&with_demo);
    let absent: Vec<&str> = SIMULATOR_MARKERS
        .into_iter()
        .filter(|m| !found.contains(*m))
        .collect();
    assert!(
        absent.is_empty(),
        "{} (built with the demo) lacks the simulator markers {absent:?}: \
         they no longer identify the simulators; pick strings slmd-hil has",
        with_demo.display()
    );

    let b = built();
    let shipped = simulator_markers_in(&b.binary());
    assert!(
        shipped.is_empty(),
        "the packaged usr/bin/slmd carries simulator code: {shipped:?}"
    );
    // The same binary before stripping (its symbols and line tables name
    // every function and source file linked in).
    let unstripped = target_dir().join("x86_64-unknown-linux-gnu/dist/slmd");
    let linked = simulator_markers_in(&unstripped);
    assert!(
        linked.is_empty(),
        "{} links simulator code: {linked:?}",
        unstripped.display()
    );

    // `slmd demo` from the package: a clear message, exit 69, and nothing
    // started (it answers at once, with nothing on stdout).
    let out = run(Command::new(b.binary()).arg("demo"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "slmd demo: {stderr}");
    assert!(out.stdout.is_empty(), "slmd demo printed on stdout");
    for needle in [
        "not in this build",
        "carries no simulators",
        "cargo run --release -p slmd -- demo",
    ] {
        assert!(
            stderr.contains(needle),
            "slmd demo says {needle:?}: {stderr}"
        );
    }

    // --help and the man page tell the same story.
    let help = stdout(Command::new(b.binary()).arg("--help"));
    let demo_line = help
        .lines()
        .find(|l| l.trim_start().starts_with("demo "))
        .unwrap_or_else(|| panic!("slmd --help lists demo:\n{help}"));
    assert!(
        demo_line.contains("Not in this build"),
        "slmd --help on demo: {demo_line}"
    );
    let page = stdout(
        Command::new("gzip")
            .arg("-dc")
            .arg(b.root.join("usr/share/man/man8/slmd.8.gz")),
    );
    let demo_section = page
        .split(".SH ")
        .find(|s| s.starts_with("\"SLMD DEMO\""))
        .unwrap_or_else(|| panic!("slmd(8) has a DEMO section:\n{page}"));
    assert!(
        demo_section.contains("Not in this build"),
        "slmd(8) on demo: {demo_section}"
    );
}
