//! Noise limits at the edge (SPEC §11): interval levels per device and
//! alert rules on readings and interval levels, evaluated on the gateway so
//! a limit holds while the uplink is down.
//!
//! - [`interval`]: the windows (aligned to local time, DST-correct) and the
//!   energy average over each, with coverage;
//! - [`rules`]: the alert rules' state machines (`for`, hysteresis,
//!   schedule, cooldown, peak rate) and the events they raise.
//!
//! Both are pure: they take the time with every call, so tests run on an
//! injected clock.

pub mod interval;
pub mod rules;
