//! The write-ahead log: every accepted batch is appended here and `fdatasync`ed before the
//! node acknowledges it.
//!
//! On disk the log is a directory of segment files named by the log sequence number (LSN) of
//! their first record (`00000000000000000001.wal`). A segment is a sequence of frames:
//!
//! ```text
//! | len: u32 LE | crc32: u32 LE | lsn: u64 LE | payload: len bytes |
//! ```
//!
//! The CRC covers the LSN and the payload. LSNs grow by one per record, across segments and
//! restarts. Only the newest segment is ever written to; a torn tail left by a crash is cut off
//! when the log is reopened (it was never acknowledged, because acknowledgement waits for the
//! sync). Segments are deleted only by [`Segments::remove_below`], once everything in them is
//! in object storage.
//!
//! - [`writer`]: the group-commit writer thread behind [`Wal::append`].
//! - [`tail`]: the reader that follows the durable end of the log.

mod faults;
mod lane;
mod tail;
mod writer;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use lane::Lane;
pub use tail::{Tail, TailRecord};
pub use writer::{Wal, WalConfig};

/// Log sequence number of a record.
pub type Lsn = u64;

/// Bytes of a frame before its payload.
pub const FRAME_HEADER_LEN: usize = 16;

/// Largest payload a frame may carry; anything larger in a file is corruption.
pub const RECORD_BYTES_MAX: usize = 256 << 20;

const SEGMENT_SUFFIX: &str = ".wal";

/// Errors of the write-ahead log.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("WAL I/O error in {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("WAL commit to {path} failed: {source}")]
    Commit {
        path: PathBuf,
        #[source]
        source: std::sync::Arc<WalError>,
    },
    #[error("the WAL is full ({bytes} bytes on disk, quota {quota}); retry when object storage has caught up")]
    QuotaExceeded { bytes: u64, quota: u64 },
    #[error("the WAL is failed after an fsync error and takes no more writes; restart the node")]
    Poisoned,
    #[error("the WAL writer has stopped")]
    Closed,
    #[error("record of {0} bytes is larger than the WAL accepts")]
    RecordTooLarge(usize),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Appends one frame for `payload` at `lsn` to `out`.
pub(crate) fn encode_frame(out: &mut Vec<u8>, lsn: Lsn, payload: &[u8]) {
    let lsn_bytes = lsn.to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&lsn_bytes);
    crc.update(payload);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&lsn_bytes);
    out.extend_from_slice(payload);
}

/// What one attempt to read a frame at the start of `bytes` found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    /// A whole, valid frame of `len` bytes in total.
    Record {
        lsn: Lsn,
        payload: &'a [u8],
        len: usize,
    },
    /// `bytes` ends before the frame does.
    Incomplete,
    /// The header or checksum is wrong.
    Corrupt,
}

pub(crate) fn decode_frame(bytes: &[u8]) -> Frame<'_> {
    if bytes.len() < FRAME_HEADER_LEN {
        return Frame::Incomplete;
    }
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    if len > RECORD_BYTES_MAX {
        return Frame::Corrupt;
    }
    let total = FRAME_HEADER_LEN + len;
    if bytes.len() < total {
        return Frame::Incomplete;
    }
    let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[8..total]);
    if hasher.finalize() != crc {
        return Frame::Corrupt;
    }
    let mut lsn = [0u8; 8];
    lsn.copy_from_slice(&bytes[8..16]);
    Frame::Record {
        lsn: u64::from_le_bytes(lsn),
        payload: &bytes[FRAME_HEADER_LEN..total],
        len: total,
    }
}

/// Where the durable end of the log is: everything before `end` in segment `segment` (and
/// everything in older segments) has been synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DurableEnd {
    /// First LSN (and name) of the segment being written.
    pub segment: Lsn,
    /// Synced bytes of that segment.
    pub end: u64,
    /// LSN the next record will get.
    pub next_lsn: Lsn,
}

/// The segment files of one WAL directory, and the count of their bytes.
#[derive(Debug)]
pub struct Segments {
    dir: PathBuf,
    bytes: AtomicU64,
    count: AtomicU64,
    /// Segment currently written by the writer; never removed.
    active: AtomicU64,
    /// Files of damaged WAL bytes put in quarantine since start.
    quarantined: AtomicU64,
}

impl Segments {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Segments {
            dir,
            bytes: AtomicU64::new(0),
            count: AtomicU64::new(0),
            active: AtomicU64::new(0),
            quarantined: AtomicU64::new(0),
        }
    }

    /// Where damaged WAL bytes are kept for the operator: `quarantine/` beside the WAL's
    /// directory (`<data dir>/quarantine/`).
    pub fn quarantine_dir(&self) -> PathBuf {
        self.dir
            .parent()
            .map_or_else(|| self.dir.join("quarantine"), |p| p.join("quarantine"))
    }

    /// Files put in quarantine since the node started; `/readyz` shows it.
    pub fn quarantined(&self) -> u64 {
        self.quarantined.load(Ordering::Relaxed)
    }

    /// Keeps `bytes`, which the log cannot read back (they may hold acknowledged events), in
    /// `quarantine/<name>` and counts them. Best effort: a failure is logged, and the log goes
    /// on either way.
    pub(crate) fn quarantine(&self, name: &str, bytes: &[u8]) {
        let dir = self.quarantine_dir();
        let path = dir.join(name);
        let written = fs::create_dir_all(&dir)
            .and_then(|()| fs::write(&path, bytes))
            .and_then(|()| fs::File::open(&path)?.sync_all());
        self.quarantined.fetch_add(1, Ordering::Relaxed);
        match written {
            Ok(()) => tracing::error!(
                file = %path.display(),
                bytes = bytes.len(),
                "damaged WAL bytes put in quarantine: they may hold acknowledged events that are not in the lake"
            ),
            Err(err) => tracing::error!(
                file = %path.display(),
                bytes = bytes.len(),
                error = %err,
                "damaged WAL bytes could not be put in quarantine"
            ),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes of all segment files.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub(crate) fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set_active(&self, first_lsn: Lsn) {
        self.active.store(first_lsn, Ordering::Release);
    }

    pub(crate) fn path_of(&self, first_lsn: Lsn) -> PathBuf {
        self.dir.join(format!("{first_lsn:020}{SEGMENT_SUFFIX}"))
    }

    /// First LSNs of the segment files present, oldest first.
    pub fn list(&self) -> Result<Vec<Lsn>, WalError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(stem) = name.strip_suffix(SEGMENT_SUFFIX) {
                if let Ok(lsn) = stem.parse::<u64>() {
                    out.push(lsn);
                }
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Recounts segment files and bytes from the directory.
    pub(crate) fn recount(&self) -> Result<(), WalError> {
        let mut bytes = 0;
        let list = self.list()?;
        for lsn in &list {
            let path = self.path_of(*lsn);
            bytes += fs::metadata(&path).map_err(io_err(&path))?.len();
        }
        self.bytes.store(bytes, Ordering::Relaxed);
        self.count.store(list.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn add_segment(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Deletes every sealed segment whose records all have an LSN below `low_water`: those
    /// records are in object storage and will never be read again.
    pub fn remove_below(&self, low_water: Lsn) -> Result<usize, WalError> {
        let list = self.list()?;
        let active = self.active.load(Ordering::Acquire);
        let mut removed = 0;
        for pair in list.windows(2) {
            let (first, next_first) = (pair[0], pair[1]);
            // Every LSN in `first` is below the next segment's first LSN.
            if next_first > low_water || first == active {
                break;
            }
            let path = self.path_of(first);
            let len = fs::metadata(&path).map_err(io_err(&path))?.len();
            fs::remove_file(&path).map_err(io_err(&path))?;
            self.bytes.fetch_sub(len, Ordering::Relaxed);
            self.count.fetch_sub(1, Ordering::Relaxed);
            removed += 1;
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }
}

/// Whether the log in `dir` may hold a record: any segment but a single first one, or a first
/// segment that does not start with zeros (the writer preallocates with zeros). Errs towards
/// yes: a torn first record counts. A missing directory holds none.
pub fn holds_records(dir: &Path) -> Result<bool, WalError> {
    if !dir.try_exists().map_err(io_err(dir))? {
        return Ok(false);
    }
    let segments = Segments::new(dir.to_path_buf());
    match segments.list()?.as_slice() {
        [] => Ok(false),
        [1] => {
            use std::io::Read;
            let path = segments.path_of(1);
            let mut header = Vec::with_capacity(FRAME_HEADER_LEN);
            fs::File::open(&path)
                .and_then(|f| f.take(FRAME_HEADER_LEN as u64).read_to_end(&mut header))
                .map_err(io_err(&path))?;
            Ok(header.iter().any(|b| *b != 0))
        }
        _ => Ok(true),
    }
}

/// Makes a directory's entries (new or removed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), WalError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Shared handle to the segment bookkeeping.
pub type SharedSegments = Arc<Segments>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_roundtrip_and_corruption_detection() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 42, b"hello");
        match decode_frame(&buf) {
            Frame::Record { lsn, payload, len } => {
                assert_eq!((lsn, payload, len), (42, &b"hello"[..], buf.len()));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(decode_frame(&buf[..buf.len() - 1]), Frame::Incomplete);
        let mut flipped = buf.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(decode_frame(&flipped), Frame::Corrupt);
    }

    /// Fuzz: a frame cut or damaged anywhere is incomplete or corrupt, never a record other
    /// than the one written, never a panic (`SLUICE_FUZZ_MS` sets the run).
    #[test]
    fn fuzz_frames_damaged_anywhere_never_decode_as_another_record() {
        arbtest::arbtest(|u| {
            let payload: Vec<u8> = u.arbitrary()?;
            let lsn: u64 = u.arbitrary()?;
            let mut frame = Vec::new();
            encode_frame(&mut frame, lsn, &payload);
            let mut bytes = frame.clone();
            let damaged = !bytes.is_empty() && u.arbitrary()?;
            if damaged {
                let at = u.choose_index(bytes.len())?;
                bytes[at] ^= u.int_in_range(1..=255u8)?;
            }
            let cut = u.int_in_range(0..=bytes.len())?;
            match decode_frame(&bytes[..cut]) {
                Frame::Record {
                    lsn: got,
                    payload: p,
                    len,
                } => {
                    assert_eq!(len, frame.len());
                    if !damaged {
                        assert_eq!((got, p), (lsn, &payload[..]));
                    }
                }
                Frame::Incomplete | Frame::Corrupt => {
                    assert!(damaged || cut < frame.len(), "a whole frame must decode");
                }
            }
            Ok(())
        })
        .budget_ms(sluice_config::test_fixtures::fuzz_budget_ms());
    }
}
