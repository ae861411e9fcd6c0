//! Where Parquet files go in object storage: a Hive-style layout that DuckDB, Trino, Spark and
//! ClickHouse read as it is.
//!
//! ```text
//! <prefix>/workspace=<workspace-id>/source=<slug>/date=YYYY-MM-DD/hour=HH/<node>-<uuidv7>.parquet
//! ```
//!
//! Events a source's schema refused under `on_invalid = quarantine` go into the same partition
//! as `<node>-<uuidv7>.quarantine`: Parquet too, but not matched by `**/*.parquet`, so that
//! every query over the lake's events reads accepted events only, and removed with everything
//! else under `workspace=<id>/`.
//!
//! A file holds events of one hour (batches are cut when the hour changes), and its name is
//! derived from the id of its first event. The name is therefore deterministic: after a crash
//! the same batch, rebuilt from the WAL, lands under the same name and replaces the earlier
//! upload instead of duplicating it.

use chrono::{DateTime, Datelike, Timelike};
use object_store::path::Path;
use uuid::Uuid;

const MICROS_PER_HOUR: i64 = 3_600_000_000;

/// Hours since the Unix epoch of a timestamp in microseconds.
pub fn hour_of(received_at_us: i64) -> i64 {
    received_at_us.div_euclid(MICROS_PER_HOUR)
}

/// Object path of the file whose first event is `first_event_id`, received at
/// `received_at_us`.
pub fn file_path(
    prefix: &Path,
    workspace_id: Uuid,
    source: &str,
    received_at_us: i64,
    node: &str,
    first_event_id: Uuid,
    quarantine: bool,
) -> Path {
    let extension = if quarantine {
        QUARANTINE_EXTENSION
    } else {
        "parquet"
    };
    let at = DateTime::from_timestamp_micros(received_at_us).unwrap_or_default();
    let relative = format!(
        "workspace={workspace_id}/source={source}/date={:04}-{:02}-{:02}/hour={:02}/{node}-{first_event_id}.{extension}",
        at.year(),
        at.month(),
        at.day(),
        at.hour(),
    );
    prefix.parts().chain(Path::from(relative).parts()).collect()
}

/// The extension of quarantine files (Parquet, apart from the events' `*.parquet`).
pub const QUARANTINE_EXTENSION: &str = "quarantine";

/// Longest node id.
pub const NODE_ID_LEN_MAX: usize = 64;

/// Whether `id` can name a node in object names: 1 to 64 of `A-Z`, `a-z`, `0-9`, `-`, `_`,
/// `.`, and not `.` or `..` (a `/` would add a directory level to every file it writes).
pub fn is_valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= NODE_ID_LEN_MAX
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Prefix of everything stored for one workspace.
pub fn workspace_prefix(prefix: &Path, workspace_id: Uuid) -> Path {
    prefix.clone().join(format!("workspace={workspace_id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_cannot_change_the_layout() {
        for good in ["node-1a2b", "ingest_eu.1", "N7"] {
            assert!(is_valid_node_id(good), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "x=1", &"n".repeat(65), "ü"] {
            assert!(!is_valid_node_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn path_is_hive_partitioned_by_workspace_source_date_and_hour() {
        let ws = Uuid::parse_str("0190f3a0-0000-7000-8000-000000000001").expect("uuid");
        let ev = Uuid::parse_str("0190f3a0-0000-7000-8000-000000000002").expect("uuid");
        // 2024-03-05T07:08:09Z
        let at = 1_709_622_489_000_000;
        let path = file_path(&Path::from("lake"), ws, "telemetry", at, "node1", ev, false);
        assert_eq!(
            path.as_ref(),
            "lake/workspace=0190f3a0-0000-7000-8000-000000000001/source=telemetry/date=2024-03-05/hour=07/node1-0190f3a0-0000-7000-8000-000000000002.parquet"
        );
        assert_eq!(hour_of(at), hour_of(at + 1));
        let quarantine = file_path(&Path::from("lake"), ws, "telemetry", at, "node1", ev, true);
        assert_eq!(
            quarantine.as_ref(),
            path.as_ref().replace(".parquet", ".quarantine")
        );
    }
}
