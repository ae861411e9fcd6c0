//! Which I/O driver runs the HTTP threads, and whether this process may use io_uring at all.
//!
//! io_uring is the fast path, but a process can be refused it: Docker 25+ and containerd 2's
//! default seccomp profiles answer `io_uring_setup`, `io_uring_enter` and `io_uring_register`
//! with EPERM, `kernel.io_uring_disabled` turns it off (EPERM), and kernels built without it
//! answer ENOSYS. So the node asks the kernel once, at start, before any thread is spawned:
//! `auto` then falls back to epoll with one warning, and `io_uring` refuses to start with an
//! error that says what to do. It never decides per connection: a node runs one driver (but
//! for an `auto` thread whose own ring fails after the probe's succeeded, which serves on
//! epoll with a warning of its own rather than keep the node from starting).

use std::io;

use serde::Deserialize;

/// The setting (`http.io_driver`): what the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpIoDriver {
    /// io_uring where the kernel allows it, epoll otherwise.
    #[default]
    Auto,
    /// io_uring or nothing: the node does not start without it.
    IoUring,
    /// epoll (hyper on standard tokio runtimes), io_uring never tried.
    Epoll,
}

impl std::str::FromStr for HttpIoDriver {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(HttpIoDriver::Auto),
            "epoll" => Ok(HttpIoDriver::Epoll),
            "io_uring" | "io-uring" | "uring" => Ok(HttpIoDriver::IoUring),
            other => Err(format!(
                "unknown HTTP I/O driver {other:?}: use auto, io_uring or epoll"
            )),
        }
    }
}

/// The driver the HTTP threads run on, once the setting met the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Driver {
    IoUring,
    Epoll,
}

impl Driver {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Driver::IoUring => "io_uring",
            Driver::Epoll => "epoll",
        }
    }
}

/// `http.io_driver = "io_uring"` on a kernel or under a profile that refuses io_uring.
#[derive(Debug, thiserror::Error)]
#[error(
    "io_uring is unavailable ({source}) and http.io_driver is io_uring: allow io_uring_setup, \
     io_uring_enter and io_uring_register in the seccomp profile (or run unconfined) and check \
     that sysctl kernel.io_uring_disabled is 0, or set http.io_driver to auto or epoll \
     (--http-io-driver, SLUICE_HTTP_IO_DRIVER)"
)]
pub struct IoUringUnavailable {
    #[source]
    pub source: io::Error,
}

/// Resolves the setting against what the kernel allows this process; `auto` falls back to
/// epoll with one warning that says why and how to get io_uring back.
pub(crate) fn resolve(setting: HttpIoDriver) -> Result<Driver, IoUringUnavailable> {
    match setting {
        HttpIoDriver::Epoll => Ok(Driver::Epoll),
        HttpIoDriver::IoUring => probe()
            .map(|()| Driver::IoUring)
            .map_err(|source| IoUringUnavailable { source }),
        HttpIoDriver::Auto => match probe() {
            Ok(()) => Ok(Driver::IoUring),
            Err(err) => {
                tracing::warn!(
                    error = %err,
                    "io_uring is unavailable, so HTTP ingest runs on epoll (slower); to get \
                     io_uring back, allow io_uring_setup, io_uring_enter and io_uring_register \
                     in the seccomp profile and set sysctl kernel.io_uring_disabled to 0, or \
                     set http.io_driver = \"epoll\" to choose epoll without this warning"
                );
                Ok(Driver::Epoll)
            }
        },
    }
}

/// Submission queue entries of each HTTP thread's ring.
pub(crate) const RING_ENTRIES: u32 = 1024;

/// io_uring setup for the HTTP runtimes. By default the kernel interrupts the thread (through
/// the signal path) to run completion work as soon as a socket read finishes; with cooperative
/// task running it runs that work at the thread's next ring entry instead, which a profile of
/// single-event ingest showed to be a large share of the HTTP thread's kernel time. Kernels
/// before 5.19 lack the flags; they get the default setup.
pub(crate) fn ring_setup() -> io_uring::Builder {
    let mut cooperative = tokio_uring::uring_builder();
    cooperative.setup_coop_taskrun().setup_taskrun_flag();
    if cooperative.build(8).is_ok() {
        cooperative
    } else {
        tokio_uring::uring_builder()
    }
}

/// Sets up a ring as the HTTP threads will (same size and flags, so that a kernel that
/// charges rings to `RLIMIT_MEMLOCK`, before 5.12, refuses here and not in a thread) and
/// enters it once: the two calls a seccomp profile or `kernel.io_uring_disabled` refuses. (A
/// profile that allowed the setup but not the enter would otherwise pass here and fail every
/// thread's first wait.)
fn probe() -> io::Result<()> {
    let ring: io_uring::IoUring = ring_setup().build(RING_ENTRIES)?;
    ring.submit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setting_takes_the_names_mqtt_io_driver_takes_and_auto() {
        assert_eq!("auto".parse(), Ok(HttpIoDriver::Auto));
        assert_eq!("epoll".parse(), Ok(HttpIoDriver::Epoll));
        assert_eq!("io_uring".parse(), Ok(HttpIoDriver::IoUring));
        assert!("kqueue".parse::<HttpIoDriver>().is_err());
        assert_eq!(resolve(HttpIoDriver::Epoll).ok(), Some(Driver::Epoll));
    }
}
