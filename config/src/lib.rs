//! The configuration the control plane pushes to every data-plane node.
//!
//! - [`snapshot`]: one version of it (workspaces, sources, token hashes with scopes and
//!   bindings) and its validation.
//! - [`delta`] and [`state`]: the change between two versions, and the indexed copy a node
//!   applies changes to.
//! - [`shaping`]: sources' JSON Schemas, the typed columns they give, and tag rules.
//! - [`data_out`]: outputs (filtered, projected views of a source), export endpoints and
//!   webhook subscriptions.
//! - [`nudge`]: the control plane telling a node in the same process that its snapshot file
//!   changed.
//! - [`outbound`]: which addresses Sluice may connect to on a workspace's behalf.
//! - [`sealed`]: secrets sealed with the cluster secret for their trip in the configuration.
//! - [`webhook_signature`]: Standard Webhooks signatures.
//! - [`hash`]: the content hash that proves two copies equal.
//! - [`token`]: generating access tokens and hashing them; no secret is ever stored.
//! - [`stream`]: the configuration stream's wire types.
//!
//! This crate knows nothing of storage, HTTP or MQTT: both planes depend on it, and it on
//! neither.
#![forbid(unsafe_code)]

pub mod data_out;
pub mod delta;
pub mod hash;
pub mod nudge;
pub mod outbound;
pub mod sealed;
pub mod shaping;
pub mod snapshot;
pub mod state;
pub mod stream;
pub mod token;
pub mod webhook_signature;

#[cfg(any(test, feature = "test-fixtures"))]
pub mod test_fixtures;
