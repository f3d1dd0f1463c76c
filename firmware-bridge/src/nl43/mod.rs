//! The Rion NL-43 / NL-53 / NL-63 command protocol (NL-42 / NL-52 close kin).
//!
//! What lives here is the wire form only, no I/O and no timing: the daemon's
//! device driver decides what to send when; the meter simulator in `hil`
//! uses the same code from the other side.
//!
//! - [`command`]: `Name?` requests and `Name,param` settings, both directions.
//! - [`answer`]: the result line `R+0000`..`R+0004` and the data line
//!   answers of `Measure?`, `Pause?`, `Clock?` and `Battery Level?`.
//! - [`dod`]: the 64-field `DOD?` display line, parsed into a fixed [`dod::DodReading`].
//! - [`drd`]: the 10 Hz `DRD?` continuous-output line.
//!
//! The protocol facts, with how sure we are of each, are in the project's
//! `protocols/nl43.md`. Where a fact is a guess the parser is lenient in the
//! direction that cannot produce a wrong value (it rejects a line rather
//! than guess a field).

pub mod answer;
pub mod command;
pub mod dod;
pub mod drd;

pub use answer::{BatteryLevel, MeasureState, MeterClock, ResultCode};
pub use command::{Command, Item};
pub use dod::{ChannelValues, DodReading};
pub use drd::DrdLine;

/// The byte that ends `DRD?` continuous output (ASCII SUB), sent alone.
pub const DRD_STOP: u8 = 0x1A;

/// Longest line either side sends: a `DOD?` line is 64 × 6 bytes.
pub const MAX_LINE: usize = 512;

/// Splits a line at commas, trimming nothing.
pub(crate) fn fields(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|&b| b == b',')
}

/// Removes ASCII spaces (and a stray CR) at both ends.
pub(crate) fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\r' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\r' | b'\t'] = s {
        s = rest;
    }
    s
}
