//! slmd: the edge telemetry daemon for noise-monitoring gateways.
//!
//! The binary (`main.rs`) only parses the command line, sets up logging and
//! calls into this library. The library is one module per role:
//!
//! | module | owns |
//! |---|---|
//! | [`api`] | the local HTTP API: status, live, history, the SSE stream, metrics |
//! | [`buffer`] | the SQLite ring buffer: every record on disk until pushed, bounded, crash-safe |
//! | [`clock`] | the wall clock record timestamps come from (steppable in tests) |
//! | [`check`] | `slmd check`: probing each meter with a short deadline |
//! | [`config`] | the one serde tree of `slmd.toml`, validation, located errors |
//! | [`device`] | one task per meter: the link, protocol pacing, reconnects, device status |
//! | [`record`] | the record of SPEC §3 and its JSON form |
//! | [`fanout`] | `seq` assignment and delivery to every consumer without waiting |
//! | [`uplink`] | pushing the buffer to the fleet: order, retries, token failover, quarantine |
//! | [`logging`] | journald (structured fields) under systemd, plain text on a terminal |
//! | [`notify`] | sd_notify: READY, RELOADING, STOPPING, STATUS and the watchdog's liveness check |
//! | [`mqtt`] | publishing records and device state to a local MQTT broker |
//! | [`printer`] | the live feed on stdout (`text`, `jsonl`) |
//! | [`status`] | `slmd status`: the running daemon's status as a 60-column table |
//! | [`reload`] | which config keys a reload applies and which wait for a restart |
//! | [`supervisor`] | wiring the tasks together, reloading them, stopping them |
//! | `demo` | the whole pipeline against simulated meters (feature `demo`, on by default; not in the packages) |
//!
//! See `ARCHITECTURE.md` at the repository root for how a reading flows.

pub mod api;
pub mod buffer;
pub mod check;
pub mod clock;
pub mod config;
/// Only with the `demo` feature: it is the one module that uses the HIL
/// kit's simulators, and the packaged binary carries none.
#[cfg(feature = "demo")]
pub mod demo;
pub mod device;
pub mod fanout;
pub mod limits;
pub mod logging;
pub mod mqtt;
pub mod notify;
pub mod printer;
pub mod record;
pub mod reload;
pub mod status;
pub mod supervisor;
pub mod uplink;
