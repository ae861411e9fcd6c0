//! The HTTP front end: hyper on one runtime per core, io_uring or epoll, the ingest API and
//! its problem+json refusals.
//!
//! - [`server`]: the listeners, connection limits and shutdown, the same for both drivers.
//! - [`io_driver`]: which driver, and whether the kernel allows this process io_uring.
//! - `uring_io`: tokio-uring's owned-buffer sockets behind hyper's `Read`/`Write`.
//! - `epoll_io`: tokio's sockets behind them, with the same idle timeout.
//! - [`api`]: the routes; `POST /v1/ingest/...` reads and checks the request, then takes the
//!   [admission path](crate::admit).
//! - `budget`: the memory budget request bodies hold as they arrive and inflate.
//! - `cors`: cross-origin requests from the web origins a workspace allows.
//! - [`problem`]: the problem types and their RFC 9457 bodies.

pub(crate) mod api;
mod budget;
mod cors;
mod epoll_io;
pub(crate) mod io_driver;
pub(crate) mod problem;
pub(crate) mod server;
pub(crate) mod uring_io;
