//! Byte-stream framing and meter protocol codecs for slmd.
//!
//! This crate is `#![no_std]` and never allocates: every buffer is a
//! `heapless` collection with a capacity fixed at compile time, so the same
//! code can run inside a microcontroller serial bridge and inside the daemon.
//! No input, however malformed, makes it panic (property tests and a fuzz
//! target per family hold it to that).
//!
//! Layout:
//! - [`framer`]: turns arbitrary chunks of a byte stream into lines (CR LF,
//!   stray `$` prompts, bounded length with resync).
//! - [`decibel`]: [`Deci`], the tenths-of-a-dB level of the NL-43 family.
//! - [`level`]: [`Centi`], the hundredths-of-a-dB level of the other
//!   families (one or two decimals, decimal point or comma).
//! - [`metric`]: the canonical record metric names (`lp`, `leq`, `l90`, …)
//!   every codec maps its wire names to.
//! - [`nl43`]: the Rion NL-43 / NL-53 / NL-63 command protocol: command
//!   encoding and parsing, result codes, `DOD?` and `DRD?` data lines, and the
//!   answers of `Measure?`, `Clock?` and `Battery Level?`.
//! - [`xl2`]: the NTi Audio XL2 SCPI-like protocol: commands, identity,
//!   state, `MEAS:SLM:123?` values and the error queue.
//! - [`svantek`]: the Svantek `#fn,…;` protocol: the `;` frame splitter,
//!   requests, `#1` settings and the letter-tagged `#2` results.
//! - [`casella`]: the Casella CEL-63x pushed lines and the assembler that
//!   groups one logging period's lines into one reading.
//! - [`Error`]: the one error type of the codecs.
#![cfg_attr(not(test), no_std)]

mod ascii;
pub mod casella;
pub mod decibel;
mod error;
pub mod framer;
pub mod level;
pub mod metric;
pub mod nl43;
pub mod svantek;
pub mod xl2;

pub use decibel::Deci;
pub use error::Error;
pub use framer::{Feed, LineFramer};
pub use level::Centi;
