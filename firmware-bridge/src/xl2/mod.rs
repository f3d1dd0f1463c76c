//! The NTi Audio XL2 remote-measurement protocol (SCPI-like, polled).
//!
//! What lives here is the wire form only, no I/O and no timing: the daemon's
//! XL2 driver decides what to send when (flush input, `MEAS:INIT`, then
//! `MEAS:SLM:123?` once a second); the simulator in `hil` uses the same code
//! from the other side.
//!
//! - [`command`]: the commands slmd sends ([`Command`]) and the measurement
//!   parameters ([`Param`]) with their record metric, in one table.
//! - [`reply`]: the answers: `*IDN?` ([`Identity`]), `INIT:STATE?`
//!   ([`InitState`]), measurement values ([`Value`], [`parse_values`]) and
//!   the error queue ([`parse_error_queue`], [`error_text`]).
//!
//! Lines end in LF; CR LF is accepted (frame with [`crate::LineFramer`]).
//! Commands are written with `\n` only.
//!
//! Facts that are a **\[guess\]** (see the project's `protocols/xl2.md`), each
//! one constant:
//! - the status words that mean over- and under-range: [`reply::STATUS_WORDS`];
//! - that dashes (`-.-`) mean "no value yet": [`reply::Value::parse`] maps any
//!   dashes to `None` rather than rejecting them;
//! - that percentiles are any `L1%`..`L99%` (the notes list 1, 5, 10, 50, 90,
//!   95, 99): [`command::Param::Percentile`].
//!
//! `SYST:MSD` / `SYST:MSDMAC` (mass-storage mode: the serial port vanishes)
//! have no [`Command`] variant, so slmd cannot send them.

pub mod command;
pub mod reply;

pub use command::{Command, Param};
pub use reply::{
    Identity, InitState, Status, StatusFlag, Value, error_text, parse_error_queue, parse_values,
};

/// Longest line either side sends that slmd keeps (a `MEAS:SLM:123?` with
/// many parameters, or a reply with many values).
pub const MAX_LINE: usize = 256;

/// Most parameters one `MEAS:SLM:123?` carries in slmd (and the simulator's
/// parse buffer).
pub const MAX_PARAMS: usize = 16;
