//! `seq` numbering that survives a damaged buffer: where numbering starts,
//! and the reservation of numbers on disk before they are used.
//!
//! # Reservation
//! The hub may hand out a `seq` only below the anchor's limit (see
//! [`super::anchor`]). When the next number comes within
//! [`RESERVE_AHEAD`] of the limit, a background thread raises the limit to
//! [`RESERVE_BLOCK`] past it and syncs the anchor, long before the numbers
//! are needed, so the live feed does not wait on the disk. Only a burst of
//! more than [`RESERVE_AHEAD`] readings within one anchor write makes the
//! hub write the anchor itself.
//!
//! # Where numbering starts ([`decide`])
//! - After a clean stop, exactly where it stopped: no number is lost.
//! - After an unclean stop (kill, power cut, crash), at the anchor's limit.
//!   The numbers between the last committed `seq` and the limit were
//!   streamed live but never stored, or never handed out; they are declared
//!   to the fleet as skipped, at most [`SKIP_BOUND`] of them while the disk
//!   takes writes (the reserve is [`RESERVE_BLOCK`] and the writer commits
//!   within a batch of the hub).
//! - Without a valid anchor, from the buffer when it is sound (a buffer
//!   written by an older slmd included).
//! - Without a valid anchor or a sound buffer, and with signs that this
//!   gateway numbered records before (a damaged buffer, files moved aside),
//!   nothing can rule out that the fleet already holds the numbers about to
//!   be used: a new **epoch** starts, a random number the fleet keys its
//!   de-duplication with (`(gateway, epoch, seq)`), so no new record is
//!   mistaken for a duplicate. Numbering still continues above every `seq`
//!   the damaged file holds, so salvaged rows keep their numbers.
//! - With nothing at all (a new gateway), epoch 0 from 1.

use super::anchor::{AnchorFile, AnchorState, Loaded};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Numbers reserved at a time: what an unclean stop skips at most, beyond
/// the readings not yet committed. Smaller means smaller skips and more
/// anchor writes (one 4 KiB write per block: every 8 minutes with four
/// meters at one reading a second).
pub const RESERVE_BLOCK: u64 = 2_000;
/// How close to the limit the next number may come before the next block
/// is reserved (in the background: the hub only writes the anchor itself
/// when a burst uses this many numbers within one anchor write).
pub const RESERVE_AHEAD: u64 = 500;
/// Most numbers one unclean stop may skip while the disk takes writes
/// (SPEC §7).
pub const SKIP_BOUND: u64 = 10_000;
/// How often, at most, the cursor's copy in the anchor is refreshed: each
/// copy is a page written and synced (flash wear), and losing up to ten
/// minutes of it only makes the fleet see those records twice after the
/// buffer's own counters are lost.
pub const CURSOR_COPY_EVERY: Duration = Duration::from_secs(600);

/// Largest epoch: epochs stay exact in a JSON number read as a double.
const EPOCH_MAX: u64 = (1 << 53) - 1;

/// What is known at start about the numbers used before.
#[derive(Debug, Clone)]
pub struct Knowledge {
    /// The anchor as found.
    pub anchor: AnchorFound,
    /// One past the highest `seq` the buffer holds or ever held (its
    /// `next_seq`), 1 for an empty one.
    pub committed_next: u64,
    /// `committed_next` is known: the buffer is sound and was written
    /// before, or a damaged one's counters still read.
    pub committed_known: bool,
    /// That buffer recorded a clean stop (what files of older versions say
    /// instead of the anchor).
    pub buffer_clean: bool,
    /// The buffer's current epoch.
    pub buffer_epoch: u64,
    /// The highest `seq` found in damaged files waiting for salvage (only
    /// looked for when nothing else says where numbering stopped).
    pub damaged_max_seq: Option<u64>,
    /// Damaged files wait for salvage.
    pub damaged: bool,
    /// Signs of earlier numbering besides a sound buffer: damaged or
    /// moved-aside buffer files.
    pub evidence: bool,
}

/// The anchor, reduced to what [`decide`] needs.
#[derive(Debug, Clone)]
pub enum AnchorFound {
    /// A valid anchor.
    Valid(AnchorState),
    /// None, or none that reads (why).
    Absent(String),
}

/// Where numbering continues, and what the fleet must be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The epoch of the numbers handed out from now.
    pub epoch: u64,
    /// The next `seq`.
    pub next: u64,
    /// Numbers never stored, to declare as skipped: `[from, to]`.
    pub skip: Option<(u64, u64)>,
    /// The skip's lower end is only known once the damaged file is
    /// salvaged: declare `[max(salvaged + 1, next - SKIP_BOUND), next - 1]`
    /// then.
    pub skip_after_salvage: bool,
    /// Why a new epoch started, if one did.
    pub new_epoch: Option<String>,
    /// Why numbering did not simply continue, for the journal.
    pub note: Option<String>,
}

/// Decides where numbering continues (see the module doc). `new_epoch`
/// gives a fresh epoch when one is needed.
pub fn decide(k: &Knowledge, new_epoch: impl FnOnce() -> u64) -> Decision {
    let floor = k
        .committed_next
        .max(k.damaged_max_seq.map_or(1, |m| m.saturating_add(1)))
        .max(1);
    match &k.anchor {
        AnchorFound::Valid(a) => match a.clean_next {
            Some(clean) => Decision {
                epoch: a.epoch,
                next: clean.max(floor),
                skip: None,
                skip_after_salvage: false,
                new_epoch: None,
                note: None,
            },
            None => {
                let next = a.limit.max(floor);
                let skip = (k.committed_known && k.committed_next < next)
                    .then(|| (k.committed_next, next - 1));
                Decision {
                    epoch: a.epoch,
                    next,
                    skip,
                    skip_after_salvage: !k.committed_known && k.damaged && next > 1,
                    new_epoch: None,
                    note: Some(format!(
                        "the previous run did not stop cleanly: numbering continues at {next}, \
                         past the numbers it had reserved"
                    )),
                }
            }
        },
        AnchorFound::Absent(why) if k.committed_known => {
            if k.buffer_clean {
                Decision {
                    epoch: k.buffer_epoch,
                    next: floor,
                    skip: None,
                    skip_after_salvage: false,
                    new_epoch: None,
                    note: Some(format!("numbering continues from the buffer ({why})")),
                }
            } else {
                let next = floor + SKIP_BOUND;
                Decision {
                    epoch: k.buffer_epoch,
                    next,
                    skip: Some((floor, next - 1)),
                    skip_after_salvage: false,
                    new_epoch: None,
                    note: Some(format!(
                        "the previous run did not stop cleanly and the anchor is gone ({why}): \
                         numbering continues {SKIP_BOUND} past the buffer's last seq"
                    )),
                }
            }
        }
        AnchorFound::Absent(why) if k.evidence || k.damaged => {
            let epoch = new_epoch();
            Decision {
                epoch,
                next: floor,
                skip: None,
                skip_after_salvage: false,
                new_epoch: Some(format!(
                    "the anchor ({why}) and the buffer's counters are both lost, so the fleet may \
                     already hold the numbers from {floor} on"
                )),
                note: None,
            }
        }
        AnchorFound::Absent(_) => Decision {
            epoch: k.buffer_epoch,
            next: floor,
            skip: None,
            skip_after_salvage: false,
            new_epoch: None,
            note: None,
        },
    }
}

/// A random epoch in `1..2^53`.
pub fn random_epoch() -> u64 {
    let mut bytes = [0u8; 8];
    let from_os = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_ok();
    let raw = if from_os {
        u64::from_le_bytes(bytes)
    } else {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.write_u32(std::process::id());
        h.finish()
    };
    (raw & EPOCH_MAX).max(1)
}

/// The running numbering: the anchor file and the limit below which the
/// hub may hand out numbers.
#[derive(Debug)]
pub struct Numbering {
    /// The anchor's content and file; locked for the short write only.
    inner: Mutex<Inner>,
    /// The limit on disk (or in memory only, while anchor writes fail).
    limit: AtomicU64,
    /// One past the highest number handed out.
    handed: AtomicU64,
    /// A background reservation is under way.
    extending: AtomicBool,
    /// A clean stop was recorded: any further number must undo it.
    stopped: AtomicBool,
    /// The epoch of this run's numbers.
    epoch: u64,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    file: Option<AnchorFile>,
    state: AnchorState,
    cursor_written: Option<Instant>,
    /// The current write error, while anchor writes fail.
    failing: Option<String>,
}

impl Numbering {
    /// Starts numbering at `next` in `epoch`: reserves the first block in
    /// the anchor at `path` (created if need be) before returning, so no
    /// number is used before it is on disk. A failing write is logged and
    /// numbering goes on (the buffer's own `next_seq` still keeps committed
    /// numbers from being reused).
    pub fn start(path: &Path, mut state: AnchorState, next: u64) -> Arc<Numbering> {
        let epoch = state.epoch;
        state.limit = state.limit.max(next + RESERVE_BLOCK);
        state.clean_next = None;
        let (file, failing) = match AnchorFile::open_or_create(path, &state) {
            Ok(file) => (Some(file), None),
            Err(e) => {
                tracing::error!(
                    file = %path.display(),
                    error = %e,
                    "cannot write the numbering anchor; after a crash, seq numbers that were \
                     streamed live but not stored could be used again"
                );
                (None, Some(e.to_string()))
            }
        };
        Arc::new(Numbering {
            limit: AtomicU64::new(state.limit),
            handed: AtomicU64::new(next),
            extending: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            epoch,
            inner: Mutex::new(Inner {
                path: path.to_owned(),
                file,
                state,
                cursor_written: None,
                failing,
            }),
        })
    }

    /// The epoch of this run's numbers.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Every number handed out is below this.
    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Acquire)
    }

    /// Makes `seq` safe to hand out: called by the hub for each number,
    /// under its lock. Never touches the disk unless the reserve ran out.
    pub fn ensure(self: &Arc<Self>, seq: u64) {
        self.handed.fetch_max(seq + 1, Ordering::AcqRel);
        if self.stopped.load(Ordering::Acquire) {
            // A number after the recorded clean stop: the stop is void.
            self.stopped.store(false, Ordering::Release);
            self.extend(seq + RESERVE_BLOCK, true);
            return;
        }
        let limit = self.limit.load(Ordering::Acquire);
        if seq + RESERVE_AHEAD < limit {
            return;
        }
        if seq < limit {
            if !self.extending.swap(true, Ordering::AcqRel) {
                let me = Arc::clone(self);
                let spawned = std::thread::Builder::new()
                    .name("slmd-numbering".into())
                    .spawn(move || {
                        me.extend(seq + RESERVE_BLOCK, false);
                        me.extending.store(false, Ordering::Release);
                    });
                if spawned.is_err() {
                    self.extend(seq + RESERVE_BLOCK, false);
                    self.extending.store(false, Ordering::Release);
                }
            }
            return;
        }
        // The reserve ran out before the background write finished.
        self.extend(seq + RESERVE_BLOCK, false);
    }

    /// Raises the limit to `to` on disk, then in memory; `void_clean`
    /// also takes back a recorded clean stop (a number was handed out
    /// after it).
    fn extend(&self, to: u64, void_clean: bool) {
        let mut inner = self.lock();
        let void = void_clean && inner.state.clean_next.is_some();
        if to <= inner.state.limit && !void {
            return;
        }
        inner.state.limit = inner.state.limit.max(to);
        if void_clean {
            inner.state.clean_next = None;
        }
        inner.save("reserving seq numbers");
        self.limit.fetch_max(inner.state.limit, Ordering::AcqRel);
    }

    /// Mirrors the buffer's names before a commit uses a new id.
    pub fn names_changed(&self, devices: Vec<(i64, String)>, metrics: Vec<(i64, String)>) {
        let mut inner = self.lock();
        if inner.state.devices == devices && inner.state.metrics == metrics {
            return;
        }
        inner.state.devices = devices;
        inner.state.metrics = metrics;
        inner.save("mirroring the buffer's names");
    }

    /// Refreshes the cursor's copy when it is older than
    /// [`CURSOR_COPY_EVERY`] (or when `force`).
    pub fn cursor_moved(&self, cursor: u64, force: bool) {
        let mut inner = self.lock();
        let due = force
            || inner
                .cursor_written
                .is_none_or(|at| at.elapsed() >= CURSOR_COPY_EVERY);
        if !due || cursor <= inner.state.cursor {
            return;
        }
        inner.state.cursor = cursor;
        inner.cursor_written = Some(Instant::now());
        inner.save("copying the push cursor");
    }

    /// Records a clean stop: the next run continues at
    /// `max(committed_next, every number handed out)` with nothing skipped.
    pub fn clean_stop(&self, committed_next: u64, cursor: u64) {
        let mut inner = self.lock();
        let next = committed_next.max(self.handed.load(Ordering::Acquire));
        inner.state.clean_next = Some(next);
        inner.state.limit = inner.state.limit.max(next);
        inner.state.cursor = inner.state.cursor.max(cursor);
        inner.save("recording the clean stop");
        self.stopped.store(true, Ordering::Release);
    }

    /// The anchor's current content.
    pub fn state(&self) -> AnchorState {
        self.lock().state.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Plain data, valid after a panic elsewhere.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    /// Writes the state; logs when writing starts or stops failing.
    fn save(&mut self, what: &str) {
        let result = match &mut self.file {
            Some(file) => file.write(&self.state),
            None => AnchorFile::open_or_create(&self.path, &self.state).map(|f| {
                self.file = Some(f);
            }),
        };
        match result {
            Ok(()) => {
                if let Some(error) = self.failing.take() {
                    tracing::info!(previous_error = %error, "numbering anchor writes resumed");
                }
            }
            Err(e) => {
                let message = e.to_string();
                if self.failing.as_deref() != Some(message.as_str()) {
                    tracing::error!(
                        file = %self.path.display(),
                        error = %message,
                        "numbering anchor: {what} failed; numbering goes on, but after a crash \
                         numbers streamed live and not stored could be used again"
                    );
                }
                self.failing = Some(message);
            }
        }
    }
}

/// The anchor as found, for [`Knowledge`].
pub fn found(loaded: Loaded) -> AnchorFound {
    match loaded {
        Loaded::Found(state) => AnchorFound::Valid(state),
        Loaded::Missing => AnchorFound::Absent("no anchor file".into()),
        Loaded::Invalid(reason) => AnchorFound::Absent(format!("anchor unreadable: {reason}")),
        Loaded::Unreadable(e) => AnchorFound::Absent(format!("anchor cannot be read: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anchor(limit: u64, clean_next: Option<u64>, epoch: u64) -> AnchorFound {
        AnchorFound::Valid(AnchorState {
            epoch,
            limit,
            clean_next,
            ..AnchorState::default()
        })
    }

    fn knowledge(anchor: AnchorFound, committed_next: u64) -> Knowledge {
        Knowledge {
            anchor,
            committed_next,
            committed_known: true,
            buffer_clean: true,
            buffer_epoch: 0,
            damaged_max_seq: None,
            damaged: false,
            evidence: false,
        }
    }

    fn no_new_epoch() -> u64 {
        panic!("no new epoch expected")
    }

    #[test]
    fn a_clean_stop_continues_exactly() {
        let d = decide(&knowledge(anchor(9000, Some(501), 0), 501), no_new_epoch);
        assert_eq!((d.next, d.skip, d.epoch), (501, None, 0));
        // Numbers handed out past the last commit are in clean_next.
        let d = decide(&knowledge(anchor(9000, Some(505), 3), 501), no_new_epoch);
        assert_eq!((d.next, d.skip, d.epoch), (505, None, 3));
    }

    #[test]
    fn an_unclean_stop_continues_at_the_limit_and_declares_the_gap() {
        let d = decide(&knowledge(anchor(8501, None, 0), 501), no_new_epoch);
        assert_eq!(d.next, 8501);
        assert_eq!(d.skip, Some((501, 8500)));
        assert!(d.skip.is_some_and(|(a, b)| b - a < SKIP_BOUND));
        // A damaged buffer: the lower end comes from the salvage.
        let mut k = knowledge(anchor(8501, None, 0), 1);
        k.committed_known = false;
        k.damaged = true;
        let d = decide(&k, no_new_epoch);
        assert_eq!((d.next, d.skip, d.skip_after_salvage), (8501, None, true));
    }

    #[test]
    fn a_lost_anchor_with_a_sound_buffer_keeps_the_epoch() {
        let mut k = knowledge(AnchorFound::Absent("no anchor file".into()), 700);
        k.buffer_epoch = 42;
        let d = decide(&k, no_new_epoch);
        assert_eq!((d.next, d.skip, d.epoch), (700, None, 42));
        k.buffer_clean = false;
        let d = decide(&k, no_new_epoch);
        assert_eq!(d.next, 700 + SKIP_BOUND);
        assert_eq!(d.skip, Some((700, 700 + SKIP_BOUND - 1)));
    }

    #[test]
    fn losing_both_starts_a_new_epoch_above_the_damaged_rows() {
        let mut k = knowledge(AnchorFound::Absent("no anchor file".into()), 1);
        k.committed_known = false;
        k.damaged = true;
        k.damaged_max_seq = Some(100_000);
        let d = decide(&k, || 77);
        assert_eq!((d.epoch, d.next, d.skip), (77, 100_001, None));
        assert!(d.new_epoch.is_some());
        // A brand-new gateway: epoch 0 from 1.
        let mut k = knowledge(AnchorFound::Absent("no anchor file".into()), 1);
        k.committed_known = false;
        let d = decide(&k, no_new_epoch);
        assert_eq!((d.epoch, d.next, d.new_epoch), (0, 1, None));
    }

    #[test]
    fn random_epochs_are_nonzero_and_json_exact() {
        for _ in 0..100 {
            let e = random_epoch();
            assert!((1..=EPOCH_MAX).contains(&e));
        }
    }

    #[test]
    fn numbers_are_reserved_on_disk_before_use() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("b.anchor");
        let numbering = Numbering::start(&path, AnchorState::default(), 1);
        let on_disk = || match super::super::anchor::load(&path) {
            Loaded::Found(s) => s,
            other => panic!("{other:?}"),
        };
        assert_eq!(on_disk().limit, 1 + RESERVE_BLOCK);
        // Handing out numbers right up to the limit (faster than any
        // background write) never passes what is on disk.
        for seq in 1..3 * RESERVE_BLOCK {
            numbering.ensure(seq);
            assert!(seq < numbering.limit());
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while on_disk().limit < 3 * RESERVE_BLOCK {
            assert!(Instant::now() < deadline, "background reservation");
            std::thread::yield_now();
        }
        // A clean stop records the exact next number; a later number voids it.
        numbering.clean_stop(10, 0);
        assert_eq!(on_disk().clean_next, Some(3 * RESERVE_BLOCK));
        numbering.ensure(3 * RESERVE_BLOCK);
        assert_eq!(on_disk().clean_next, None);
        assert!(on_disk().limit > 3 * RESERVE_BLOCK);
    }
}
