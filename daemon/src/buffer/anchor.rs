//! The anchor: a small file beside the buffer holding what a damaged or
//! deleted buffer must not take with it.
//!
//! `{state_dir}/buffer.anchor` (the buffer's file stem + `.anchor`) holds:
//! - the **numbering epoch** and the **seq limit**: every `seq` ever handed
//!   out is below the limit (numbers are reserved in blocks and the limit
//!   is on disk before a number of a block is used), or, after a clean stop,
//!   the exact next `seq`;
//! - a recent copy of the **push cursor** (written at most every ten minutes and
//!   at a clean stop), so a buffer whose counters are lost does not send the
//!   whole backlog again;
//! - the **names** (device and metric ids of the buffer's rows), written
//!   before the first commit that uses a new id, so rows whose `names` page is
//!   lost can still be read;
//! - the buffer's page size, which the salvage's page reader needs when the
//!   file header is gone.
//!
//! # Format
//! Two slots of [`SLOT_BYTES`] at offsets 0 and [`SLOT_BYTES`]. A slot:
//!
//! | bytes | holds |
//! |---|---|
//! | 0..8 | magic `SLMDANCR` |
//! | 8..12 | format version, u32 LE (1) |
//! | 12..16 | payload length, u32 LE |
//! | 16..24 | generation, u64 LE (higher is newer) |
//! | 24..28 | CRC-32 (IEEE) of bytes 8..24 and the payload, u32 LE |
//! | 28..32 | zero |
//! | 32.. | payload: [`AnchorState`] as JSON |
//!
//! A write goes to the slot holding the older generation, in place, and is
//! followed by `fdatasync`; the file never grows after it is created, so a
//! write needs no new disk blocks and works on a full disk. A write torn by a
//! power cut leaves that slot failing its CRC and the other slot intact: the
//! reader takes the valid slot with the highest generation. That older slot
//! is still safe to number from: a new limit is only used after its write
//! completed, so the numbers above the older limit were never handed out.

use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Bytes per slot (the file is two slots).
pub const SLOT_BYTES: usize = 16 * 1024;
/// Slot header bytes before the payload.
const HEADER_BYTES: usize = 32;
/// Largest payload a slot holds.
pub const MAX_PAYLOAD: usize = SLOT_BYTES - HEADER_BYTES;
const MAGIC: &[u8; 8] = b"SLMDANCR";
const FORMAT: u32 = 1;

/// The anchor's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchorState {
    /// The numbering epoch: 0 for a gateway's first numbering; a new random
    /// number when numbering had to start again without knowing which
    /// numbers were used (SPEC §7 extension, see the README).
    pub epoch: u64,
    /// Every `seq` handed out is below this.
    pub limit: u64,
    /// After a clean stop: the exact next `seq` (no numbers were lost).
    /// `None` while running: a restart continues at `limit`.
    pub clean_next: Option<u64>,
    /// A recent copy of the push cursor (never ahead of the buffer's).
    pub cursor: u64,
    /// The buffer's page size, for reading a file whose header is gone.
    pub page_size: u32,
    /// Device ids as the buffer's rows use them.
    pub devices: Vec<(i64, String)>,
    /// Metric name ids as the buffer's rows use them.
    pub metrics: Vec<(i64, String)>,
    /// `(first seq, epoch)` of each numbering epoch the buffer holds.
    #[serde(default)]
    pub epochs: Vec<(u64, u64)>,
}

/// What was found at the anchor's path.
#[derive(Debug)]
pub enum Loaded {
    /// A valid slot.
    Found(AnchorState),
    /// No anchor file.
    Missing,
    /// A file whose slots both fail (reason).
    Invalid(String),
    /// The file could not be read (I/O error: not a verdict on its content).
    Unreadable(std::io::Error),
}

/// The anchor file, open for writing.
#[derive(Debug)]
pub struct AnchorFile {
    path: PathBuf,
    file: File,
    /// Generation of the newest valid slot.
    generation: u64,
}

/// The anchor's path for the buffer at `buffer`: the same folder and file
/// stem, extension `.anchor` (`buffer.sqlite` → `buffer.anchor`).
pub fn path_for(buffer: &Path) -> PathBuf {
    buffer.with_extension("anchor")
}

/// Reads the anchor at `path`.
pub fn load(path: &Path) -> Loaded {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Loaded::Missing,
        Err(e) => return Loaded::Unreadable(e),
    };
    let mut bytes = Vec::with_capacity(2 * SLOT_BYTES);
    if let Err(e) = (&mut file)
        .take(2 * SLOT_BYTES as u64)
        .read_to_end(&mut bytes)
    {
        return Loaded::Unreadable(e);
    }
    match newest_slot(&bytes) {
        Ok((_, state)) => Loaded::Found(state),
        Err(reason) => Loaded::Invalid(reason),
    }
}

/// The newest valid slot in `bytes`: its generation and state, or why none is valid.
fn newest_slot(bytes: &[u8]) -> Result<(u64, AnchorState), String> {
    let mut best: Option<(u64, AnchorState)> = None;
    let mut reasons = Vec::new();
    for (i, offset) in [0, SLOT_BYTES].into_iter().enumerate() {
        let slot = bytes.get(offset..).unwrap_or_default();
        match decode_slot(slot) {
            Ok((generation, state)) => {
                if best.as_ref().is_none_or(|(g, _)| generation > *g) {
                    best = Some((generation, state));
                }
            }
            Err(reason) => reasons.push(format!("slot {}: {reason}", i + 1)),
        }
    }
    best.ok_or_else(|| reasons.join("; "))
}

fn decode_slot(slot: &[u8]) -> Result<(u64, AnchorState), String> {
    let header = slot
        .get(..HEADER_BYTES)
        .ok_or_else(|| format!("only {} bytes", slot.len()))?;
    if &header[..8] != MAGIC {
        return Err("no anchor magic".into());
    }
    let u32_at = |at: usize| -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&header[at..at + 4]);
        u32::from_le_bytes(b)
    };
    let format = u32_at(8);
    if format != FORMAT {
        return Err(format!("format {format}, this slmd reads {FORMAT}"));
    }
    let len = u32_at(12) as usize;
    if len > MAX_PAYLOAD {
        return Err(format!("payload length {len} beyond the slot"));
    }
    let mut g = [0u8; 8];
    g.copy_from_slice(&header[16..24]);
    let generation = u64::from_le_bytes(g);
    let payload = slot
        .get(HEADER_BYTES..HEADER_BYTES + len)
        .ok_or("payload cut short")?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header[8..24]);
    crc.update(payload);
    if crc.finalize() != u32_at(24) {
        return Err("checksum mismatch".into());
    }
    let state = serde_json::from_slice(payload).map_err(|e| format!("payload: {e}"))?;
    Ok((generation, state))
}

/// The payload length a slot's header gives.
fn payload_len(slot: &[u8]) -> usize {
    let mut len = [0u8; 4];
    len.copy_from_slice(&slot[12..16]);
    u32::from_le_bytes(len) as usize
}

fn encode_slot(generation: u64, state: &AnchorState) -> std::io::Result<Vec<u8>> {
    let payload = serde_json::to_vec(state)?;
    if payload.len() > MAX_PAYLOAD {
        return Err(std::io::Error::other(format!(
            "anchor payload of {} bytes does not fit a {SLOT_BYTES}-byte slot",
            payload.len()
        )));
    }
    let mut slot = vec![0u8; SLOT_BYTES];
    slot[..8].copy_from_slice(MAGIC);
    slot[8..12].copy_from_slice(&FORMAT.to_le_bytes());
    slot[12..16].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    slot[16..24].copy_from_slice(&generation.to_le_bytes());
    slot[HEADER_BYTES..HEADER_BYTES + payload.len()].copy_from_slice(&payload);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&slot[8..24]);
    crc.update(&payload);
    slot[24..28].copy_from_slice(&crc.finalize().to_le_bytes());
    Ok(slot)
}

impl AnchorFile {
    /// Opens the anchor at `path` and writes `state` into it in place, or
    /// creates it with `state` (written to a temporary file, synced, renamed
    /// into place, and the folder synced) when it is missing or has no
    /// valid slot.
    pub fn open_or_create(path: &Path, state: &AnchorState) -> std::io::Result<AnchorFile> {
        if let Ok(mut file) = OpenOptions::new().read(true).write(true).open(path) {
            let mut bytes = Vec::with_capacity(2 * SLOT_BYTES);
            (&mut file)
                .take(2 * SLOT_BYTES as u64)
                .read_to_end(&mut bytes)?;
            if bytes.len() == 2 * SLOT_BYTES
                && let Ok((generation, _)) = newest_slot(&bytes)
            {
                let mut anchor = AnchorFile {
                    path: path.to_owned(),
                    file,
                    generation,
                };
                anchor.write(state)?;
                return Ok(anchor);
            }
        }
        let tmp = path.with_extension("anchor.new");
        {
            let mut file = File::create(&tmp)?;
            // Generation g lives in slot g % 2; both slots start valid.
            file.write_all(&encode_slot(0, state)?)?;
            file.write_all(&encode_slot(1, state)?)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            // The rename is durable once the folder is synced.
            File::open(dir)?.sync_all()?;
        }
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(AnchorFile {
            path: path.to_owned(),
            file,
            generation: 1,
        })
    }

    /// Writes `state` over the older slot and waits until it is on disk.
    pub fn write(&mut self, state: &AnchorState) -> std::io::Result<()> {
        let generation = self.generation + 1;
        let slot = encode_slot(generation, state)?;
        // Generation g lives in slot g % 2, so the newest slot is never the
        // one overwritten.
        let offset = (generation % 2) * SLOT_BYTES as u64;
        self.file.seek(SeekFrom::Start(offset))?;
        // Only the header and the payload: the rest of the slot is never
        // read (the length is in the header), and a smaller write wears the
        // card less.
        let used = HEADER_BYTES + payload_len(&slot);
        self.file.write_all(&slot[..used.min(SLOT_BYTES)])?;
        self.file.sync_data()?;
        self.generation = generation;
        Ok(())
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(limit: u64) -> AnchorState {
        AnchorState {
            epoch: 0,
            limit,
            clean_next: None,
            cursor: 7,
            page_size: 4096,
            devices: vec![(0, "nl43-north".into())],
            metrics: vec![(0, "lp".into()), (1, "leq".into())],
            epochs: vec![],
        }
    }

    #[test]
    fn the_newest_write_is_read_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("buffer.anchor");
        assert!(matches!(load(&path), Loaded::Missing));
        let mut anchor = AnchorFile::open_or_create(&path, &state(100)).expect("create");
        for limit in [200, 300, 400] {
            anchor.write(&state(limit)).expect("write");
            match load(&path) {
                Loaded::Found(s) => assert_eq!(s, state(limit)),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            std::fs::metadata(&path).expect("meta").len(),
            2 * SLOT_BYTES as u64
        );
        drop(anchor);
        // Reopening continues the generations.
        let mut again = AnchorFile::open_or_create(&path, &state(500)).expect("reopen");
        again.write(&state(600)).expect("write");
        assert!(matches!(load(&path), Loaded::Found(s) if s.limit == 600));
    }

    #[test]
    fn a_torn_or_damaged_slot_falls_back_to_the_other() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("buffer.anchor");
        let mut anchor = AnchorFile::open_or_create(&path, &state(100)).expect("create");
        anchor.write(&state(200)).expect("write");
        drop(anchor);
        // Generation 2 is in slot 0: tear it (half written).
        let mut bytes = std::fs::read(&path).expect("read");
        for b in &mut bytes[40..SLOT_BYTES / 2] {
            *b = 0;
        }
        std::fs::write(&path, &bytes).expect("tear");
        match load(&path) {
            Loaded::Found(s) => assert_eq!(s.limit, 100, "the older, intact slot"),
            other => panic!("{other:?}"),
        }
        // Both slots gone: invalid, with the reasons.
        let zeros = vec![0u8; 2 * SLOT_BYTES];
        std::fs::write(&path, zeros).expect("zero");
        match load(&path) {
            Loaded::Invalid(reason) => assert!(reason.contains("slot 2"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // And an invalid file is replaced on open.
        let anchor = AnchorFile::open_or_create(&path, &state(900)).expect("recreate");
        drop(anchor);
        assert!(matches!(load(&path), Loaded::Found(s) if s.limit == 900));
    }

    #[test]
    fn any_bytes_are_an_answer_not_a_panic() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("x.anchor");
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in [
            0,
            1,
            31,
            32,
            100,
            SLOT_BYTES,
            2 * SLOT_BYTES,
            3 * SLOT_BYTES,
        ] {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            std::fs::write(&path, &bytes).expect("write");
            assert!(matches!(load(&path), Loaded::Invalid(_)), "{len} bytes");
        }
    }
}
