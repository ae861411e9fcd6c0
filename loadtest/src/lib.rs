//! Fleet simulators for Sluice: [`mqtt`] drives N devices, each with its own MQTT connection.
//! The `sluice-loadtest` binary is their command line; `sluice-bench mqtt` uses the same code
//! so that the benchmark and a hand-run load test measure the same thing.

pub mod mqtt;
