//! What a test needs beyond cargo: tools on `PATH`, root.
//!
//! The convention (README, "Tests and the tools they need"): a test that
//! needs anything beyond cargo and a C compiler is marked
//! `#[ignore = "needs <what>; .ci/run installs it"]`, so a plain
//! `cargo test --workspace` lists it as ignored instead of passing it
//! without running it. `.ci/run` runs `cargo test --workspace --
//! --include-ignored`; there, and for anyone else who asks for ignored
//! tests, the test starts by calling [`require_tools`] / [`require_root`],
//! which fail it with a message naming what is missing. Nothing here skips.

use std::path::PathBuf;

/// Whether `tool` is an executable on `PATH` (or in an sbin directory).
pub fn have(tool: &str) -> bool {
    find(tool).is_some()
}

/// Where `tool` is: on `PATH`, or in an sbin directory (which a non-root
/// `PATH` often lacks).
pub fn find(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|candidate| {
            std::fs::metadata(candidate).is_ok_and(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
        })
}

/// Fails the test unless every tool is installed, naming the missing ones.
pub fn require_tools(tools: &[&str]) {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !have(t)).collect();
    assert!(
        missing.is_empty(),
        "this test needs {} (not installed here; .ci/run installs it, or see README.md, \
         \"Tests and the tools they need\")",
        missing.join(", ")
    );
}

/// Fails the test unless it runs as root, saying what root is for.
pub fn require_root(what_for: &str) {
    let euid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    assert!(
        matches!(euid, Ok(0)),
        "this test needs root ({what_for}); run it as root, as .ci/run does"
    );
}
