//! Where the operating system can fail the WAL, and, in tests, a way to make it fail there:
//! `fdatasync` returning `EIO`, a write returning `ENOSPC`. Outside tests these are the plain
//! system calls.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

#[cfg(test)]
pub(crate) use injected::{inject, Fault};

/// `file.write_all_at(buf, offset)`, or the injected failure.
pub(crate) fn write_all_at(
    file: &File,
    dir: &std::path::Path,
    buf: &[u8],
    offset: u64,
) -> io::Result<()> {
    #[cfg(test)]
    if injected::take(dir, Fault::WriteNoSpace) {
        return Err(io::Error::from_raw_os_error(libc::ENOSPC));
    }
    let _ = dir;
    file.write_all_at(buf, offset)
}

/// `file.sync_data()`, or the injected failure.
pub(crate) fn sync_data(file: &File, dir: &std::path::Path) -> io::Result<()> {
    #[cfg(test)]
    if injected::take(dir, Fault::SyncIo) {
        return Err(io::Error::from_raw_os_error(libc::EIO));
    }
    let _ = dir;
    file.sync_data()
}

#[cfg(test)]
mod injected {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    /// A failure to inject.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub(crate) enum Fault {
        /// `fdatasync` fails with `EIO`.
        SyncIo,
        /// A write fails with `ENOSPC`.
        WriteNoSpace,
    }

    /// Failures still to inject, by WAL directory (tests run side by side).
    static PENDING: Mutex<Option<HashMap<(PathBuf, Fault), u32>>> = Mutex::new(None);

    /// Makes the next `times` calls of the WAL in `dir` fail with `fault`.
    pub(crate) fn inject(dir: &Path, fault: Fault, times: u32) {
        let mut pending = PENDING.lock().unwrap_or_else(|e| e.into_inner());
        pending
            .get_or_insert_with(HashMap::new)
            .insert((dir.to_path_buf(), fault), times);
    }

    pub(super) fn take(dir: &Path, fault: Fault) -> bool {
        let mut pending = PENDING.lock().unwrap_or_else(|e| e.into_inner());
        let Some(left) = pending
            .as_mut()
            .and_then(|p| p.get_mut(&(dir.to_path_buf(), fault)))
        else {
            return false;
        };
        if *left == 0 {
            return false;
        }
        *left -= 1;
        true
    }
}
