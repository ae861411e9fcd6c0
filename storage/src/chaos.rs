//! Named crash points for the chaos rounds (`sluice-loadtest chaos`, `tests/chaos.rs`): places
//! where a `kill -9` tests a promise that a kill at a random moment would rarely hit, such as
//! between an object's upload and the watermark that records it.
//!
//! Built only with the cargo feature `chaos` (the root crate's tests turn it on; release builds
//! for the long run pass `--features chaos`). Without it [`point`] is an empty inline function,
//! so a production binary carries no way to kill itself. With it, `SLUICE_CHAOS=<point>:<n>`
//! makes the process SIGKILL itself the `n`th time it reaches `<point>` (counted from process
//! start); any other point, or no variable, does nothing.
//!
//! The points, by name:
//! - `parquet-encode`: a Parquet file written but not closed (`parquet_file::encode`);
//! - `upload`: the object is in the lake, the key's watermark not yet committed (`shipper`);
//! - `wal-rotate`: the next segment created, the sealed one not yet left (`wal::writer`);
//! - `config-swap`: the node serves a new configuration that is not yet in its cache
//!   (`sluice-dataplane`'s `config_source` and `config_stream`).

/// The points a chaos run may name, in the order above.
pub const POINTS: [&str; 5] = [
    "parquet-encode",
    "upload",
    "commit-entry",
    "wal-rotate",
    "config-swap",
];

/// The line written to stderr just before the kill, followed by ` <point> (hit <n>)`; the chaos
/// driver finds it in the node's log to tell which point fired.
pub const KILL_LINE: &str = "sluice chaos: SIGKILL at";

/// Reaching the crash point `name`: kills the process when `SLUICE_CHAOS` says so.
#[cfg(not(feature = "chaos"))]
#[inline(always)]
pub fn point(_name: &'static str) {}

/// Reaching the crash point `name`: kills the process when `SLUICE_CHAOS` says so.
#[cfg(feature = "chaos")]
pub fn point(name: &'static str) {
    armed::hit(name);
}

#[cfg(feature = "chaos")]
mod armed {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    /// The point named by `SLUICE_CHAOS` and on which hit it kills; `None` when unset or
    /// unreadable (a chaos build run normally behaves normally).
    static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    /// Hits of the armed point so far.
    static HITS: AtomicU64 = AtomicU64::new(0);

    fn armed() -> Option<&'static (String, u64)> {
        ARMED
            .get_or_init(|| {
                let spec = std::env::var("SLUICE_CHAOS").ok()?;
                let (name, n) = spec.split_once(':').unwrap_or((spec.as_str(), "1"));
                let n = n.parse::<u64>().ok().filter(|&n| n > 0)?;
                Some((name.to_owned(), n))
            })
            .as_ref()
    }

    pub(super) fn hit(name: &'static str) {
        let Some((armed, n)) = armed() else { return };
        if armed != name {
            return;
        }
        let hit = HITS.fetch_add(1, Ordering::Relaxed) + 1;
        if hit != *n {
            return;
        }
        // stderr is unbuffered: the line is in the log before the signal lands.
        eprintln!("{} {name} (hit {hit})", super::KILL_LINE);
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        // SIGKILL to oneself is delivered before `kill` returns to user space on Linux; never
        // go on past the point in case it is not.
        loop {
            std::thread::park();
        }
    }
}
