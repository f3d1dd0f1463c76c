//! Any bytes as `slmd.toml`: the loader answers with a config or with an
//! error that has a place (line and column), and never panics. Slow inputs
//! show up as libFuzzer timeouts (run with `-timeout=`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("/etc/slmd/slmd.toml");
    match slmd::config::from_bytes(data.to_vec(), path) {
        Ok(config) => {
            // What passed validation is within the stated limits.
            assert!(config.devices.len() <= slmd::config::MAX_DEVICES);
            for device in &config.devices {
                assert!(device.poll_interval <= slmd::config::MAX_PERIOD);
                assert!(device.command_gap <= slmd::config::MAX_COMMAND_GAP);
                assert!(device.reconnect_max <= slmd::config::MAX_RECONNECT);
            }
            assert!(config.fleet.interval <= slmd::config::MAX_PERIOD);
            assert!(config.fleet.retry_max <= slmd::config::MAX_PERIOD);
            assert!(config.fleet.timeout <= slmd::config::MAX_TIMEOUT);
        }
        Err(e) => {
            // Inputs here are far below the size limit: every error is located.
            assert!(e.line.is_some() && e.column.is_some(), "unlocated: {e}");
            let shown = e.to_string();
            assert!(shown.starts_with("/etc/slmd/slmd.toml:"), "{shown}");
        }
    }
});
