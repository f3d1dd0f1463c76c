//! What a reload (`SIGHUP`) may change while running, and what waits for a
//! restart: the rules, kept apart from the tasks they apply to
//! (`supervisor` applies them).
//!
//! Every key of [`Config`] is in exactly one of two groups:
//!
//! | takes effect on reload | waits for a restart |
//! |---|---|
//! | `[[device]]`: each meter kept, reconnected, stopped or started | `gateway.id`, `gateway.state_dir` |
//! | `[fleet]`: tokens live; any other key replaces the uplink | `buffer.max_records`, `buffer.max_bytes`, `buffer.durability`, `buffer.commit_interval`, `buffer.exclusive` |
//! | `[mqtt]`: the publisher is replaced (also when the meter list changes) | `api.listen`, `[levels]`, `[[channel]]`, `[[alert]]` |
//! | `api.tokens`, `api.stream_max` (streams opened after) | |
//!
//! The second group is reported, never ignored: one journal line per
//! reload that finds such a change, and `needs_restart` in `/v1/status`
//! naming each key (compared with the config the daemon started with, so
//! editing a key back clears it). The functions here destructure every
//! table without `..`, so a key added to the config does not compile until
//! it is put in one group or the other.

use crate::config::{ApiConfig, BufferConfig, Config, FleetConfig, GatewayConfig};

/// The keys whose new value in `file` differs from the one the daemon
/// `started` with and that only a restart applies, as `section.key`.
pub fn restart_keys(started: &Config, file: &Config) -> Vec<String> {
    let Config {
        gateway,
        buffer,
        // Applied on reload.
        devices: _,
        api,
        mqtt: _,
        fleet: _,
        levels,
        channels,
        alerts,
    } = file;
    let mut keys = Vec::new();
    let mut differs = |key: &str, changed: bool| {
        if changed {
            keys.push(key.to_owned());
        }
    };
    let GatewayConfig {
        id,
        state_dir,
        clock_trusted,
    } = gateway;
    differs("gateway.id", *id != started.gateway.id);
    differs(
        "gateway.clock_trusted",
        *clock_trusted != started.gateway.clock_trusted,
    );
    differs("gateway.state_dir", *state_dir != started.gateway.state_dir);
    let BufferConfig {
        max_records,
        max_bytes,
        durability,
        commit_interval,
        exclusive,
    } = buffer;
    differs(
        "buffer.max_records",
        *max_records != started.buffer.max_records,
    );
    differs("buffer.max_bytes", *max_bytes != started.buffer.max_bytes);
    differs(
        "buffer.durability",
        *durability != started.buffer.durability,
    );
    differs(
        "buffer.commit_interval",
        *commit_interval != started.buffer.commit_interval,
    );
    differs("buffer.exclusive", *exclusive != started.buffer.exclusive);
    let ApiConfig {
        listen,
        // Applied on reload.
        tokens: _,
        stream_max: _,
    } = api;
    differs("api.listen", *listen != started.api.listen);
    // The limits engine holds open windows and episode state built from
    // these tables; it starts with the daemon.
    differs("levels", *levels != started.levels);
    differs("channel", *channels != started.channels);
    differs("alert", *alerts != started.alerts);
    keys
}

/// How a reloaded `[fleet]` table differs from the running one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetChange {
    /// Nothing changed.
    Same,
    /// Only the tokens (or the token file): the running uplink takes them.
    Tokens,
    /// These keys changed: the uplink is replaced (or started, or stopped).
    Keys(Vec<&'static str>),
}

/// What changed between the running `[fleet]` table and the file's.
pub fn fleet_change(running: &FleetConfig, file: &FleetConfig) -> FleetChange {
    let FleetConfig {
        enabled,
        url,
        tokens,
        token_file,
        batch_max,
        interval,
        token_retry,
        gzip,
        timeout,
        retry_min,
        retry_max,
        auth_retry,
        heartbeat_interval,
        transport,
        urls,
        topic_prefix,
        username,
        ca_file,
        client_cert,
        client_key,
    } = file;
    let mut keys = Vec::new();
    let mut differs = |key: &'static str, changed: bool| {
        if changed {
            keys.push(key);
        }
    };
    differs("enabled", *enabled != running.enabled);
    differs("url", *url != running.url);
    differs("batch_max", *batch_max != running.batch_max);
    differs("interval", *interval != running.interval);
    differs("token_retry", *token_retry != running.token_retry);
    differs("gzip", *gzip != running.gzip);
    differs("timeout", *timeout != running.timeout);
    differs("retry_min", *retry_min != running.retry_min);
    differs("retry_max", *retry_max != running.retry_max);
    differs("auth_retry", *auth_retry != running.auth_retry);
    differs(
        "heartbeat_interval",
        *heartbeat_interval != running.heartbeat_interval,
    );
    differs("transport", *transport != running.transport);
    differs("urls", *urls != running.urls);
    differs("topic_prefix", *topic_prefix != running.topic_prefix);
    differs("username", *username != running.username);
    differs("ca_file", *ca_file != running.ca_file);
    differs("client_cert", *client_cert != running.client_cert);
    differs("client_key", *client_key != running.client_key);
    if !keys.is_empty() {
        FleetChange::Keys(keys)
    } else if *tokens != running.tokens || *token_file != running.token_file {
        FleetChange::Tokens
    } else {
        FleetChange::Same
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(text: &str) -> Config {
        crate::config::parse(text, Path::new("t.toml")).expect("valid")
    }

    const BASE: &str = "[gateway]\nid = \"gw\"\nstate_dir = \"/tmp/s\"\n\n[fleet]\nenabled = true\nurl = \"http://127.0.0.1:1\"\ntokens = [\"a\"]\n";

    #[test]
    fn restart_keys_name_each_changed_key_and_clear_when_edited_back() {
        let started = config(BASE);
        assert!(restart_keys(&started, &started).is_empty());
        let edited = config(&BASE.replace(
            "[fleet]",
            "[buffer]\nmax_records = 5\ndurability = \"full\"\n\n[api]\nlisten = \"127.0.0.1:9999\"\n\n[fleet]",
        ));
        assert_eq!(
            restart_keys(&started, &edited),
            ["buffer.max_records", "buffer.durability", "api.listen"]
        );
        let renamed = config(&BASE.replace("id = \"gw\"", "id = \"gw2\""));
        assert_eq!(restart_keys(&started, &renamed), ["gateway.id"]);
    }

    #[test]
    fn live_keys_never_wait_for_a_restart() {
        let started = config(BASE);
        let edited = config(&format!(
            "{}\n[api]\ntokens = [\"t\"]\nstream_max = \"1m\"\n\n[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n\n[[device]]\nid = \"m\"\nprotocol = \"nl43\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:9\"\n",
            BASE.replace("enabled = true", "enabled = false")
        ));
        assert!(restart_keys(&started, &edited).is_empty());
    }

    #[test]
    fn fleet_tokens_alone_are_applied_live_anything_else_replaces_the_uplink() {
        let running = config(BASE).fleet;
        assert_eq!(fleet_change(&running, &running), FleetChange::Same);
        let tokens = config(&BASE.replace("[\"a\"]", "[\"b\", \"a\"]")).fleet;
        assert_eq!(fleet_change(&running, &tokens), FleetChange::Tokens);
        let off = config(&BASE.replace("enabled = true", "enabled = false")).fleet;
        assert_eq!(
            fleet_change(&running, &off),
            FleetChange::Keys(vec!["enabled"])
        );
        let moved = config(&format!(
            "{}batch_max = 7\n",
            BASE.replace("127.0.0.1:1", "127.0.0.1:2")
        ))
        .fleet;
        assert_eq!(
            fleet_change(&running, &moved),
            FleetChange::Keys(vec!["url", "batch_max"])
        );
    }
}
