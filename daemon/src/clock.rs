//! The gateway's wall clock, as record timestamps see it.
//!
//! Every `received_at` is read from a [`WallClock`]. In the daemon it is the
//! system clock; tests hold a handle and [`WallClock::step`] it to play the
//! clock jumps a gateway sees in the field (NTP correcting a box that booted
//! with a wrong RTC, a GPS time source coming and going). Nothing that
//! orders, paces or times out reads the wall clock: those use the monotonic
//! clock, so a step changes timestamps and nothing else.

use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// The wall clock record timestamps come from. Clones share one clock.
#[derive(Debug, Clone, Default)]
pub struct WallClock {
    /// Milliseconds added to the system clock: 0 unless a test stepped it.
    offset_ms: Arc<AtomicI64>,
}

impl WallClock {
    /// The system clock.
    pub fn system() -> WallClock {
        WallClock::default()
    }

    /// The current time.
    pub fn now(&self) -> DateTime<Utc> {
        let offset = self.offset_ms.load(Ordering::Relaxed);
        let now = Utc::now();
        if offset == 0 {
            return now;
        }
        now.checked_add_signed(chrono::Duration::milliseconds(offset))
            .unwrap_or(now)
    }

    /// Moves this clock (and every clone) by `by`, forwards or backwards.
    pub fn step(&self, by: chrono::Duration) {
        self.offset_ms
            .fetch_add(by.num_milliseconds(), Ordering::Relaxed);
    }
}

/// Whether the kernel says the system clock is synchronised (NTP,
/// chrony, systemd-timesyncd or a GPS daemon cleared `STA_UNSYNC`):
/// `adjtimex` answers `TIME_ERROR` while it is not.
pub fn system_synchronised() -> bool {
    // SAFETY: adjtimex with `modes = 0` only reads the kernel's clock
    // state into the zeroed struct it is given.
    let state = unsafe {
        let mut timex: libc::timex = std::mem::zeroed();
        libc::adjtimex(&mut timex)
    };
    state >= 0 && state != libc::TIME_ERROR
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_moves_every_clone() {
        let clock = WallClock::system();
        let clone = clock.clone();
        clock.step(chrono::Duration::hours(-2));
        let behind = Utc::now() - clone.now();
        assert!(
            behind >= chrono::Duration::minutes(119) && behind <= chrono::Duration::minutes(121),
            "stepped 2 h back, but the clone is {behind} behind"
        );
    }
}
