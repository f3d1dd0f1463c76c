//! The Casella CEL-63x online mode: the meter pushes lines, nobody polls.
//!
//! What lives here is the wire form only, no I/O and no timing: the
//! daemon's Casella driver reads lines with a [`crate::LineFramer`] (lines
//! end in CR LF; LF alone is accepted), parses each with
//! [`PushedLine::parse`] and hands it to an [`Assembler`], which groups the
//! lines of one logging period into one reading. The driver calls
//! [`Assembler::flush`] after a quiet gap; the simulator in `hil` writes
//! lines with [`line::encode_broadband`].
//!
//! - [`line`](mod@line): one pushed line (`<LAeq>, 2010-05-07, 15:23:45, 54.3`), its
//!   tag → metric table and the meter's timestamp ([`MeterTime`]).
//! - [`assembler`]: lines with the same timestamp → one [`Assembled`] reading.
//!
//! Facts that are a **\[guess\]** (see the project's `protocols/casella.md`),
//! each one constant:
//! - the broad-band tag set and what each maps to: [`line::BROADBAND_TAGS`];
//! - that a tag containing [`line::OCTAVE_MARK`] is a spectrum line;
//! - how a blank value is written when the simulator sends one:
//!   [`line::NO_VALUE`] (the parser takes an empty field or any dashes).

pub mod assembler;
pub mod line;

pub use assembler::{Assembled, Assembler};
pub use line::{LineKind, MeterTime, PushedLine};

/// Longest line slmd keeps: a 1/3-octave spectrum line is ~36 bands × 14 bytes.
pub const MAX_LINE: usize = 640;
