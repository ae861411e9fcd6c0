//! The process's file descriptors, shared by every listener and every file: the soft
//! `RLIMIT_NOFILE` is raised to the hard limit at start, a reserve is kept for what must never
//! fail for want of one (the WAL, the lake, the config cache, the control plane's store,
//! outgoing connections, the runtimes), and the listeners' connection caps are fitted into the
//! rest, so that no listener can starve the others or the files (issue 16: one listener
//! without a cap took them all, and ingest, `/healthz` and uploads failed together).
//!
//! Caps that do not fit are lowered, the largest first, with a warning that says what to
//! raise; a limit too low for a useful cap stops the start. This never lowers a limit and never
//! touches the hard limit.

use anyhow::{bail, Result};
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Descriptors kept out of every listener's reach, besides [`RESERVED_PER_THREAD`]. Sluice
/// holds about 50 at rest on 2 cores (redb files, WAL segments, runtimes' epoll and event
/// descriptors, log files); the rest is room for uploads, lake listings, mail and the
/// configuration stream, and for the instant each listener holds a connection it refuses.
pub const RESERVED: u64 = 256;

/// Descriptors kept per HTTP or MQTT thread: each has its own io_uring or epoll instance,
/// event and timer descriptors, and can hold one refused connection for an instant.
pub const RESERVED_PER_THREAD: u64 = 8;

/// A listener is not lowered below this many connections (a smaller configured cap stays);
/// when the caps would have to go lower, the start is refused: such a listener is of no use.
pub const CONNECTIONS_MIN: usize = 16;

/// One listener's connection cap: its setting's name and its value, lowered in place when
/// the caps do not fit.
pub struct Cap<'a> {
    pub setting: &'static str,
    pub value: &'a mut usize,
}

/// Raises the soft descriptor limit to the hard one, logs what was obtained, and fits `caps`
/// into it after the reserve for `threads` HTTP and MQTT threads.
pub fn fit_caps(caps: &mut [Cap<'_>], threads: usize) -> Result<()> {
    let limit = raise_soft_limit();
    let reserved = reserve(threads);
    let configured: Vec<usize> = caps.iter().map(|c| *c.value).collect();
    let wanted: u64 = configured.iter().map(|&c| c as u64).sum::<u64>() + reserved;
    let Some(granted) = share(limit, reserved, &configured) else {
        bail!(
            "the process may open only {limit} file descriptors: Sluice keeps {reserved} for \
             its files and threads and needs room for at least {CONNECTIONS_MIN} connections \
             per listener; raise the hard limit (`ulimit -Hn`, systemd `LimitNOFILE=`, \
             docker `--ulimit nofile=`) to at least {wanted}, or lower {}",
            names(caps)
        );
    };
    if granted != configured {
        let lowered: Vec<String> = caps
            .iter()
            .zip(&granted)
            .filter(|(cap, granted)| *cap.value != **granted)
            .map(|(cap, granted)| format!("{} {} -> {granted}", cap.setting, cap.value))
            .collect();
        tracing::warn!(
            limit,
            reserved,
            "the connection caps and the descriptors kept for files need {wanted} file \
             descriptors, more than the {limit} this process may open; lowered {}. To keep \
             them, raise the hard limit (`ulimit -Hn`, systemd `LimitNOFILE=`, docker \
             `--ulimit nofile=`) to at least {wanted}, or set lower caps",
            lowered.join(", ")
        );
        for (cap, granted) in caps.iter_mut().zip(granted) {
            *cap.value = granted;
        }
    } else {
        tracing::debug!(
            limit,
            reserved,
            "the connection caps fit the descriptor limit"
        );
    }
    Ok(())
}

fn names(caps: &[Cap<'_>]) -> String {
    caps.iter()
        .map(|c| c.setting)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Descriptors kept for files and threads when `threads` HTTP and MQTT threads run.
pub fn reserve(threads: usize) -> u64 {
    RESERVED + RESERVED_PER_THREAD * threads as u64
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit the process has
/// afterwards. Logs both. A failure keeps the soft limit as it was (with a warning).
fn raise_soft_limit() -> u64 {
    let before = getrlimit(Resource::Nofile);
    // `None` is "unlimited", which Linux does not allow for descriptors (`fs.nr_open` bounds
    // them): taken as a limit no cap reaches.
    let soft = before.current.unwrap_or(u64::MAX);
    let Some(hard) = before.maximum else {
        tracing::info!(
            soft,
            "file descriptors: no hard limit; the soft limit stays"
        );
        return soft;
    };
    if soft >= hard {
        tracing::info!(
            limit = soft,
            hard,
            "file descriptors: the soft limit is the hard limit"
        );
        return soft;
    }
    match setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        },
    ) {
        Ok(()) => {
            let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
            tracing::info!(
                limit = now,
                was = soft,
                hard,
                "file descriptors: raised the soft limit to the hard limit"
            );
            now
        }
        Err(e) => {
            tracing::warn!(
                limit = soft,
                hard,
                error = %e,
                "file descriptors: could not raise the soft limit; keeping it"
            );
            soft
        }
    }
}

/// The caps granted to listeners configured with `caps` when the process may open `limit`
/// descriptors and keeps `reserved` of them: the configured caps when they fit; else the
/// largest are lowered first, all to one level, the highest at which they fit, so a small cap
/// (an API kept small on purpose) stays whole. `None` when that level would be below
/// [`CONNECTIONS_MIN`].
fn share(limit: u64, reserved: u64, caps: &[usize]) -> Option<Vec<usize>> {
    let mut room = limit.saturating_sub(reserved);
    let total: u64 = caps.iter().map(|&c| c as u64).sum();
    if total <= room {
        return Some(caps.to_vec());
    }
    let mut order: Vec<usize> = (0..caps.len()).collect();
    order.sort_by_key(|&i| caps[i]);
    let mut granted = caps.to_vec();
    for (rank, &i) in order.iter().enumerate() {
        let left = (order.len() - rank) as u64;
        let level = room / left;
        if caps[i] as u64 <= level {
            room -= caps[i] as u64;
            continue;
        }
        // This cap and every larger one get the level.
        if level < CONNECTIONS_MIN as u64 {
            return None;
        }
        for &j in &order[rank..] {
            // `level < caps[j]`, a usize: the conversion cannot fail.
            granted[j] = usize::try_from(level).unwrap_or(caps[j]);
        }
        break;
    }
    Some(granted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_that_fit_are_kept() {
        assert_eq!(
            share(1 << 20, reserve(4), &[2048, 10_000, 20_000]),
            Some(vec![2048, 10_000, 20_000])
        );
    }

    #[test]
    fn the_largest_caps_are_lowered_first_to_one_level() {
        let reserved = reserve(4);
        let room = 20_000 - reserved as usize;
        let granted = share(20_000, reserved, &[2048, 10_000, 20_000]).expect("fits");
        let level = (room - 2048) / 2;
        assert_eq!(granted, vec![2048, level, level]);
        let granted = share(20_000, reserved, &[20_000, 50, 6000]).expect("fits");
        assert_eq!(
            granted,
            vec![room - 6050, 50, 6000],
            "only the largest is lowered"
        );
    }

    #[test]
    fn a_small_cap_stays_whole_when_large_ones_are_lowered() {
        let granted = share(600, 288, &[5, 10_000, 20_000]).expect("fits");
        assert_eq!(granted, vec![5, 153, 153]);
    }

    #[test]
    fn a_limit_without_room_for_the_minimums_is_refused() {
        assert_eq!(share(300, 288, &[2048, 10_000]), None);
        assert_eq!(share(100, 288, &[2048]), None);
    }
}
