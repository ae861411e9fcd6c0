//! Reading the WAL back, oldest record first, never past the durable end.
//!
//! The shipper reads everything through a [`Tail`]: after a restart it starts at the oldest
//! segment still on disk (recovery), then it follows the writer. The same code serves both,
//! so recovery is exercised on every run, not only after crashes. Reading only what is synced
//! matters: a record that is not durable may vanish in a crash, and its LSN would be reused.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use tokio::sync::watch;
use tracing::error;

use super::{decode_frame, io_err, DurableEnd, Frame, Lsn, Segments, WalError, FRAME_HEADER_LEN};
use crate::metrics::StorageMetrics;

/// One record read from the log.
#[derive(Debug)]
pub struct TailRecord {
    pub lsn: Lsn,
    pub payload: Vec<u8>,
}

struct OpenSegment {
    first: Lsn,
    file: File,
    offset: u64,
    /// LSN the next frame must carry.
    expected: Lsn,
}

/// A cursor over the durable part of the log.
pub struct Tail {
    segments: Arc<Segments>,
    durable: watch::Receiver<DurableEnd>,
    current: Option<OpenSegment>,
    /// First LSN of the newest segment read to its end.
    finished: Option<Lsn>,
    /// LSN of the next record to return: everything below it has been read.
    cursor: Lsn,
    metrics: StorageMetrics,
    buf: Vec<u8>,
}

impl Tail {
    pub fn new(
        segments: Arc<Segments>,
        durable: watch::Receiver<DurableEnd>,
        metrics: StorageMetrics,
    ) -> Result<Self, WalError> {
        let cursor = match segments.list()?.first() {
            Some(&first) => first,
            None => durable.borrow().next_lsn,
        };
        Ok(Tail {
            cursor,
            segments,
            durable,
            current: None,
            finished: None,
            metrics,
            buf: Vec::new(),
        })
    }

    /// Whether the writer has stopped: nothing more will be appended.
    pub fn writer_closed(&self) -> bool {
        self.durable.has_changed().is_err()
    }

    /// Waits until the durable end moves; false when the writer has stopped.
    pub async fn changed(&mut self) -> bool {
        self.durable.changed().await.is_ok()
    }

    /// The durable end as last published by the writer.
    pub fn durable_end(&self) -> DurableEnd {
        *self.durable.borrow()
    }

    /// LSN of the next record this tail will return; every record below it has been read.
    pub fn next_lsn(&self) -> Lsn {
        self.cursor
    }

    /// Whether every durable record has been read.
    pub fn caught_up(&self) -> bool {
        let durable = self.durable_end();
        match &self.current {
            Some(open) => open.first == durable.segment && open.offset >= durable.end,
            None => self.finished.is_some_and(|f| f >= durable.segment),
        }
    }

    /// Reads durable records not read yet, about `bytes_max` bytes at most (always at least one
    /// record when one is available). An empty result means the tail is caught up.
    pub fn read(&mut self, bytes_max: usize) -> Result<Vec<TailRecord>, WalError> {
        let durable = *self.durable.borrow();
        let mut out = Vec::new();
        let mut taken = 0usize;
        while taken < bytes_max {
            if self.current.is_none() && !self.open_next(durable)? {
                break;
            }
            let Some(open) = self.current.as_mut() else {
                break;
            };
            let path = self.segments.path_of(open.first);
            let sealed = open.first != durable.segment;
            let limit = if sealed {
                open.file.metadata().map_err(io_err(&path))?.len()
            } else {
                durable.end
            };
            if open.offset >= limit {
                if sealed {
                    self.finished = Some(open.first);
                    self.current = None;
                    continue;
                }
                break;
            }
            let available = (limit - open.offset) as usize;
            let mut want = available.min((bytes_max - taken).max(FRAME_HEADER_LEN));
            loop {
                self.buf.resize(want, 0);
                open.file
                    .read_exact_at(&mut self.buf, open.offset)
                    .map_err(io_err(&path))?;
                // Grow the read to hold at least the first whole frame.
                if want < available && want >= FRAME_HEADER_LEN {
                    let len =
                        u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                            as usize;
                    let need = FRAME_HEADER_LEN.saturating_add(len);
                    if need > want && need <= available {
                        want = need;
                        continue;
                    }
                }
                break;
            }
            let mut pos = 0;
            let mut corrupt = false;
            while pos < self.buf.len() {
                match decode_frame(&self.buf[pos..]) {
                    Frame::Record { lsn, payload, len } if lsn == open.expected => {
                        out.push(TailRecord {
                            lsn,
                            payload: payload.to_vec(),
                        });
                        taken += len;
                        pos += len;
                        open.expected += 1;
                        self.cursor = open.expected;
                    }
                    // A frame cut by the size of this read continues in the next one.
                    Frame::Incomplete if pos > 0 && want < available => break,
                    _ => {
                        corrupt = true;
                        break;
                    }
                }
            }
            open.offset += pos as u64;
            if corrupt {
                self.metrics.wal_corrupt_records_total.inc();
                error!(
                    segment = %path.display(),
                    offset = open.offset,
                    "corrupt WAL record; the rest of this segment goes to quarantine"
                );
                if !sealed {
                    // The writer's own segment cannot be skipped past; stop here.
                    break;
                }
                // What follows the damage cannot be framed any more, but it is kept: it may
                // hold acknowledged events.
                let rest = std::fs::read(&path).map(|bytes| {
                    bytes
                        .get(open.offset as usize..)
                        .unwrap_or_default()
                        .to_vec()
                });
                match rest {
                    Ok(rest) => self.segments.quarantine(
                        &format!("segment-{:020}-at-{}.wal", open.first, open.offset),
                        &rest,
                    ),
                    Err(err) => {
                        error!(segment = %path.display(), error = %err, "reading the damaged segment failed")
                    }
                }
                self.finished = Some(open.first);
                self.current = None;
            }
        }
        Ok(out)
    }

    /// Opens the segment after the last finished one; false when there is none yet.
    fn open_next(&mut self, durable: DurableEnd) -> Result<bool, WalError> {
        let list = self.segments.list()?;
        let next = list
            .into_iter()
            .find(|&first| self.finished.is_none_or(|f| first > f) && first <= durable.segment);
        let Some(first) = next else {
            return Ok(false);
        };
        let path = self.segments.path_of(first);
        let file = open_without_atime(&path).map_err(io_err(&path))?;
        self.cursor = self.cursor.max(first);
        self.current = Some(OpenSegment {
            first,
            file,
            offset: 0,
            expected: first,
        });
        Ok(true)
    }
}

/// Opens a segment for reading without updating its access time. The active segment is
/// always newer than its last read, so under `relatime` every read would set its atime and
/// dirty the inode, and the writer's next `fdatasync` would then write the inode too: one
/// more serial device round trip on a sync that acknowledgements wait for. O_NOATIME is
/// refused (EPERM) to a process that does not own the file; then the plain open is used.
fn open_without_atime(path: &std::path::Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME)
        .open(path)
    {
        Err(err) if err.raw_os_error() == Some(libc::EPERM) => File::open(path),
        opened => opened,
    }
}

#[cfg(test)]
mod tests {
    use crate::metrics::StorageMetrics;
    use crate::wal::{Tail, Wal, WalConfig};

    /// A damaged record in a sealed segment: the records before it and every later segment
    /// are read; what follows the damage in its segment is kept in quarantine, counted.
    #[test]
    fn damage_in_a_sealed_segment_goes_to_quarantine_and_reading_goes_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal_dir = dir.path().join("wal");
        let config = WalConfig {
            segment_bytes_max: 4096,
            ..WalConfig::new(wal_dir.clone())
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let wal = Wal::open(config, 1, StorageMetrics::default()).expect("open");
        let payload = |i: u64| format!("record {i:03} {}", "x".repeat(280)).into_bytes();
        for i in 1..=40 {
            let lsn = runtime.block_on(wal.append(payload(i))).expect("append");
            assert_eq!(lsn, i);
        }
        let segments = wal.segments();
        let list = segments.list().expect("list");
        assert!(list.len() >= 3, "{list:?}");
        // Damage the fifth record of the first (sealed) segment.
        let first = segments.path_of(list[0]);
        let mut bytes = std::fs::read(&first).expect("read");
        let frame = 16 + payload(1).len();
        bytes[4 * frame + 20] ^= 0xFF;
        std::fs::write(&first, &bytes).expect("write");

        let mut tail =
            Tail::new(segments.clone(), wal.durable(), StorageMetrics::default()).expect("tail");
        let read: Vec<u64> = tail
            .read(usize::MAX)
            .expect("read")
            .into_iter()
            .map(|r| r.lsn)
            .collect();
        let second_segment = list[1];
        let expected: Vec<u64> = (1..=4).chain(second_segment..=40).collect();
        assert_eq!(read, expected);
        assert_eq!(segments.quarantined(), 1);
        let kept = std::fs::read(segments.quarantine_dir().join(format!(
            "segment-{:020}-at-{}.wal",
            list[0],
            4 * frame
        )))
        .expect("the damaged bytes are kept");
        let records_end = (second_segment - 1) as usize * frame;
        assert_eq!(
            &kept[..records_end - 4 * frame],
            &bytes[4 * frame..records_end]
        );
        assert_eq!(segments.quarantine_dir(), dir.path().join("quarantine"));
    }
}
