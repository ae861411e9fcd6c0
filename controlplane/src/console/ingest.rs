//! The ingest overview on a workspace's page: per source, the events written to the lake in
//! the last hour as a small server-rendered SVG sparkline (twelve bars of five minutes), and
//! the last Parquet file written.
//!
//! It reads the lake's commit log (`sluice_storage::commits`: one small entry per uploaded
//! file, with its rows), never the Parquet files, newest entries first and a bounded number
//! per node and source, so that a page view costs a bounded number of small reads however much
//! a workspace ingests. Events still in a node's batch (up to `--batch-max-age-ms`) are not
//! counted yet. Who may see a workspace's sources is the API's to say: the caller gives the
//! sources it listed through the API.

use std::fmt::Write as _;

use sluice_storage::commits::{self, CommitEntry, CommitError};
use sluice_storage::lake::Lake;
use uuid::Uuid;

use crate::api::html::escape;

/// The window shown: the last hour.
const WINDOW_US: i64 = 3_600_000_000;
/// Bars in the sparkline: five minutes each.
const BUCKETS: usize = 12;
/// Newest commit entries read per node and source. A node writes a file per source at least
/// every `batch_max_age` (60 s by default), so an hour is 60 entries unless files are cut by
/// size; past this bound the count is shown as "at least".
const ENTRIES_PER_NODE_MAX: usize = 120;
/// Sources shown on the overview; the rest are counted in a sentence.
pub const SOURCES_MAX: usize = 20;
/// Sources whose commit logs are read at once for one page.
pub const SOURCES_AT_ONCE: usize = 4;

/// One source's writes in the window.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Activity {
    /// Rows written per five minutes, oldest first.
    pub buckets: [u64; BUCKETS],
    /// Rows written in the window.
    pub total: u64,
    /// Some node had more entries in the window than were read: `total` is a lower bound.
    pub at_least: bool,
    /// The newest file written, on any node, whenever it was.
    pub last: Option<CommitEntry>,
}

impl Activity {
    /// Counts `entry` (read newest first per node) if it is in the window ending at `now_us`;
    /// returns whether it was.
    fn add(&mut self, entry: &CommitEntry, now_us: i64) -> bool {
        if self
            .last
            .as_ref()
            .is_none_or(|l| entry.committed_at_us > l.committed_at_us)
        {
            self.last = Some(entry.clone());
        }
        let age_us = now_us - entry.committed_at_us;
        if !(0..WINDOW_US).contains(&age_us) {
            // A clock a little ahead on a node counts as now; older entries end the node's walk.
            if age_us < 0 {
                self.buckets[BUCKETS - 1] += entry.rows;
                self.total += entry.rows;
                return true;
            }
            return false;
        }
        let bucket_us = WINDOW_US / BUCKETS as i64;
        let from_end = (age_us / bucket_us) as usize;
        self.buckets[BUCKETS - 1 - from_end.min(BUCKETS - 1)] += entry.rows;
        self.total += entry.rows;
        true
    }
}

/// The writes of source `source` of workspace `workspace_id` in the hour before `now_us`.
pub async fn activity(
    lake: &Lake,
    workspace_id: Uuid,
    source: &str,
    now_us: i64,
) -> Result<Activity, CommitError> {
    let mut activity = Activity::default();
    for node in commits::nodes(lake, workspace_id, source).await? {
        let next = commits::next_seq(lake, workspace_id, source, &node).await?;
        let from = next.saturating_sub(ENTRIES_PER_NODE_MAX as u64);
        let seqs = commits::seqs_from(
            lake,
            workspace_id,
            source,
            &node,
            from,
            ENTRIES_PER_NODE_MAX,
        )
        .await?;
        let mut left_window = false;
        for seq in seqs.iter().rev() {
            let entry = commits::read(lake, workspace_id, source, &node, *seq).await?;
            if !activity.add(&entry, now_us) {
                left_window = true;
                break;
            }
        }
        // Every entry read was in the window and older ones exist: there may be more.
        if !left_window && from > 0 {
            activity.at_least = true;
        }
    }
    Ok(activity)
}

/// The sparkline of `activity` as inline SVG (no script, no style attribute: the CSP allows
/// it), with a text alternative.
pub fn sparkline(source: &str, activity: &Activity) -> String {
    const WIDTH: u64 = 120;
    const HEIGHT: u64 = 24;
    let bar = WIDTH / BUCKETS as u64;
    let highest = activity.buckets.iter().copied().max().unwrap_or(0).max(1);
    let mut bars = String::new();
    for (i, rows) in activity.buckets.iter().enumerate() {
        // At least one pixel for a bucket with any rows, so a trickle shows.
        let height = if *rows == 0 {
            0
        } else {
            (rows * HEIGHT).div_ceil(highest).max(1)
        };
        let _ = write!(
            bars,
            "<rect x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{height}\" fill=\"#0a58ca\"></rect>",
            x = i as u64 * bar,
            y = HEIGHT - height,
            w = bar - 1,
        );
    }
    format!(
        "<svg class=\"sparkline\" role=\"img\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
viewBox=\"0 0 {WIDTH} {HEIGHT}\" aria-label=\"{label}\"><title>{label}</title>\
<line x1=\"0\" y1=\"{HEIGHT}\" x2=\"{WIDTH}\" y2=\"{HEIGHT}\" stroke=\"#6e7781\"></line>{bars}</svg>",
        label = escape(&format!(
            "Events of {source} per five minutes over the last hour: {}",
            activity
                .buckets
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, rows: u64, committed_at_us: i64) -> CommitEntry {
        CommitEntry {
            seq,
            node: "n1".into(),
            path: format!("lake/{seq}.parquet"),
            rows,
            first_event_id: Uuid::nil(),
            min_received_at_us: committed_at_us,
            max_received_at_us: committed_at_us,
            committed_at_us,
        }
    }

    #[test]
    fn rows_fall_in_five_minute_bars_and_older_files_end_the_walk() {
        let now = 10 * WINDOW_US;
        let mut activity = Activity::default();
        assert!(activity.add(&entry(3, 5, now - 1), now));
        assert!(activity.add(&entry(2, 7, now - 6 * 60_000_000), now));
        assert!(!activity.add(&entry(1, 100, now - WINDOW_US - 1), now));
        assert_eq!(activity.total, 12);
        assert_eq!(activity.buckets[BUCKETS - 1], 5);
        assert_eq!(activity.buckets[BUCKETS - 2], 7);
        assert_eq!(activity.last.as_ref().map(|e| e.seq), Some(3));
        let svg = sparkline("meters", &activity);
        assert!(
            svg.contains("role=\"img\"") && svg.contains("0, 7, 5"),
            "{svg}"
        );
        assert!(!svg.contains("style="), "{svg}");
    }

    #[tokio::test]
    async fn the_newest_entries_of_every_node_are_read_from_the_lake() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lake = Lake::open(&dir.path().display().to_string()).expect("lake");
        let ws = Uuid::now_v7();
        let now = chrono::Utc::now().timestamp_micros();
        for (node, seq, rows, age_us) in [
            ("n1", 0, 100, 2 * WINDOW_US),
            ("n1", 1, 3, 60_000_000),
            ("n2", 0, 4, 1_000_000),
        ] {
            let mut e = entry(seq, rows, now - age_us);
            e.node = node.into();
            commits::append(&lake, ws, "meters", &e)
                .await
                .expect("append");
        }
        let activity = activity(&lake, ws, "meters", now).await.expect("activity");
        assert_eq!(activity.total, 7);
        assert!(!activity.at_least);
        assert_eq!(activity.last.map(|e| e.node), Some("n2".to_owned()));
        let none = super::activity(&lake, ws, "other", now)
            .await
            .expect("empty");
        assert_eq!(none, Activity::default());
    }
}
