//! The I/O driver under the MQTT threads, chosen at start rather than at compile time.
//!
//! ntex-net 4.0's io_uring stream keeps re-issuing receives into one growing buffer for as
//! long as the kernel says the socket still has data (`IORING_CQE_F_SOCK_NONEMPTY`), copying
//! the whole buffer at every growth and never handing it to the MQTT dispatcher. A client that
//! publishes QoS 0 faster than that loop drains its socket starves its worker thread
//! (measured: the thread at 100% in `memmove`, no message processed for seconds, gigabytes of
//! buffer). Newer ntex-net releases need a newer compiler, so the epoll driver (`polling`) is
//! the default here and io_uring stays a setting (`mqtt.io_driver = "io_uring"`);
//! docs/bench-log/mqtt.md has both measured.

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};

use ntex_rt::{BlockFuture, Runner};
use serde::Deserialize;

/// Which ntex I/O driver runs the MQTT threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoDriver {
    /// epoll (ntex's `polling` reactor).
    Epoll,
    /// io_uring (ntex's `uring` reactor); falls back to epoll where io_uring is unavailable.
    IoUring,
}

impl std::str::FromStr for IoDriver {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "epoll" => Ok(IoDriver::Epoll),
            "io_uring" | "io-uring" | "uring" => Ok(IoDriver::IoUring),
            other => Err(format!(
                "unknown I/O driver {other:?}: use epoll or io_uring"
            )),
        }
    }
}

/// Runs an ntex system's threads on the chosen driver.
pub struct MqttRuntime(pub IoDriver);

impl Runner for MqttRuntime {
    fn block_on(&self, fut: BlockFuture) -> Result<(), Box<dyn Any + Send>> {
        let driver: Box<dyn ntex_net::Reactor> = match self.0 {
            IoDriver::IoUring => match ntex_net::uring::Reactor::new(2048) {
                Ok(reactor) => Box::new(reactor),
                Err(err) => {
                    tracing::warn!(error = %err, "io_uring is unavailable; MQTT runs on epoll");
                    Box::new(polling()?)
                }
            },
            IoDriver::Epoll => Box::new(polling()?),
        };
        ntex_net::with_reactor(&driver, || {
            panic::catch_unwind(AssertUnwindSafe(|| {
                let rt = ntex_rt::Runtime::new(driver.handle());
                rt.block_on(fut, &*driver);
            }))
        })
    }
}

fn polling() -> Result<ntex_net::polling::Reactor, Box<dyn Any + Send>> {
    ntex_net::polling::Reactor::new().map_err(|e| {
        Box::new(format!("cannot start the epoll reactor: {e}")) as Box<dyn Any + Send>
    })
}
