//! Fleet simulators for Sluice: [`mqtt`] drives N devices, each with its own MQTT connection;
//! [`chaos`] drives HTTP and MQTT load at a node it kills and restarts, and counts what was
//! lost or duplicated. The `sluice-loadtest` binary is their command line; `sluice-bench mqtt`
//! uses the same code so that the benchmark and a hand-run load test measure the same thing,
//! and `tests/chaos.rs` runs the chaos rounds in the suite.

pub mod chaos;
pub mod mqtt;
