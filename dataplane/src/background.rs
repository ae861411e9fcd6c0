//! Background threads of a node (configuration watch and stream) run at a lower scheduling
//! priority than the request path: applying a large configuration takes a fraction of a
//! second of CPU, and on a machine with few cores it must not take that from ingest.

/// `nice` value of background threads (0 is normal, 19 the lowest priority).
const BACKGROUND_NICENESS: libc::c_int = 10;

/// Lowers the calling thread's priority. Best effort: a failure is logged and ignored.
pub fn lower_this_thread() {
    // SAFETY: gettid has no preconditions; setpriority with PRIO_PROCESS and a thread id
    // changes only that thread on Linux.
    let result = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, BACKGROUND_NICENESS)
    };
    if result != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "could not lower a background thread's priority"
        );
    }
}
