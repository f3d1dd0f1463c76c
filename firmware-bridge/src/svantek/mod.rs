//! The Svantek SVAN 97x / SV 200A remote protocol (`#<fn>,…;`, polled).
//!
//! What lives here is the wire form only, no I/O and no timing: the daemon's
//! Svantek driver sends a [`Request`] every `poll_interval` and feeds what
//! arrives through a [`FrameSplitter`]; the simulator in `hil` uses the same
//! code from the other side.
//!
//! - [`frame`]: [`FrameSplitter`], frames `#…;` out of any chunking of the
//!   byte stream (no line terminator is needed or expected).
//! - [`request`]: the requests slmd sends ([`Request`]) and the `#1` setting
//!   replies ([`parse_setting_reply`]).
//! - [`results`]: the `#2` results reply, tag by tag ([`Results`]).
//!
//! Facts that are a **\[guess\]** (see the project's `protocols/svantek.md`),
//! each one constant:
//! - the setting letters read for identity: [`request::UNIT_TYPE`] (`U`),
//!   [`request::SERIAL_NUMBER`] (`N`), [`request::FIRMWARE`] (`W`);
//! - the form of the RUN/PAUSE state the `s` flag adds:
//!   [`results::RUN_STATE_TAG`], [`results::RUN_BIT`], [`results::PAUSE_BIT`];
//! - that a `#` inside a frame starts a new frame (the previous one was cut
//!   short): [`frame`].

pub mod frame;
pub mod request;
pub mod results;

pub use frame::{FrameFeed, FrameSplitter};
pub use request::{Aver, Request, parse_setting_reply};
pub use results::{Results, ResultsReply, RunState};

/// Longest frame slmd keeps: a full `#2` reply with percentiles fits easily.
pub const MAX_FRAME: usize = 256;

/// Splits a frame body at commas (no trimming).
pub(crate) fn fields(frame: &[u8]) -> impl Iterator<Item = &[u8]> {
    frame.split(|&b| b == b',')
}

/// The frame without surrounding whitespace and without a trailing `;`.
pub(crate) fn body(frame: &[u8]) -> &[u8] {
    let frame = crate::ascii::trim(frame);
    match frame.split_last() {
        Some((b';', rest)) => crate::ascii::trim(rest),
        _ => frame,
    }
}
