//! Byte-stream framing and meter protocol codecs for slmd.
//!
//! This crate is `#![no_std]` and never allocates: every buffer is a
//! `heapless` collection with a capacity fixed at compile time, so the same
//! code can run inside a microcontroller serial bridge and inside the daemon.
//! No input, however malformed, makes it panic (property tests and a fuzz
//! target hold it to that).
//!
//! Layout:
//! - [`framer`]: turns arbitrary chunks of a byte stream into lines (CR LF,
//!   stray `$` prompts, bounded length with resync).
//! - [`decibel`]: the fixed-point sound level value the codecs share.
//! - [`nl43`]: the Rion NL-43 / NL-53 / NL-63 command protocol: command
//!   encoding and parsing, result codes, `DOD?` and `DRD?` data lines, and the
//!   answers of `Measure?`, `Clock?` and `Battery Level?`.
//! - [`Error`]: the one error type of the codecs.
#![cfg_attr(not(test), no_std)]

pub mod decibel;
mod error;
pub mod framer;
pub mod nl43;

pub use decibel::Deci;
pub use error::Error;
pub use framer::{Feed, LineFramer};
