//! A reader's position in an output: for each node that ever wrote the source's files, the
//! commit-log entry to read next and how many of its rows are already read.
//!
//! Sent to readers as an opaque token (base64url of a small JSON object): the SSE `id` of
//! every event and the `cursor` of every NDJSON page. A node that joins later is read from
//! its first entry; a node gone for good keeps its place and simply has nothing more.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sluice_storage::layout::is_valid_node_id;

/// Longest cursor accepted, encoded: a bound on what a reader can make the node parse.
pub const CURSOR_LEN_MAX: usize = 16 << 10;

/// Where one node's log is read next.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The entry to read next (entries below are read).
    pub seq: u64,
    /// Rows of that entry already read.
    pub row: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    pub nodes: BTreeMap<String, Position>,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    v: u8,
    /// node → [seq, row]
    n: BTreeMap<String, (u64, u64)>,
}

/// Why a cursor is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the cursor is not one this endpoint gave out")]
pub struct BadCursor;

impl Cursor {
    pub fn encode(&self) -> String {
        let wire = Wire {
            v: 1,
            n: self
                .nodes
                .iter()
                .map(|(node, p)| (node.clone(), (p.seq, p.row)))
                .collect(),
        };
        // Serialising a map of strings and numbers cannot fail.
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&wire).unwrap_or_default())
    }

    pub fn decode(text: &str) -> Result<Cursor, BadCursor> {
        if text.len() > CURSOR_LEN_MAX {
            return Err(BadCursor);
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| BadCursor)?;
        let wire: Wire = serde_json::from_slice(&bytes).map_err(|_| BadCursor)?;
        if wire.v != 1 || wire.n.keys().any(|node| !is_valid_node_id(node)) {
            return Err(BadCursor);
        }
        Ok(Cursor {
            nodes: wire
                .n
                .into_iter()
                .map(|(node, (seq, row))| (node, Position { seq, row }))
                .collect(),
        })
    }

    pub fn position(&self, node: &str) -> Position {
        self.nodes.get(node).copied().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_tampering() {
        let mut cursor = Cursor::default();
        cursor
            .nodes
            .insert("node-a".into(), Position { seq: 12, row: 40 });
        cursor
            .nodes
            .insert("b.2".into(), Position { seq: 0, row: 0 });
        let text = cursor.encode();
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(Cursor::decode(&text), Ok(cursor));
        for bad in [
            "",
            "x",
            "eyJ2IjoyLCJuIjp7fX0",
            &"A".repeat(CURSOR_LEN_MAX + 1),
        ] {
            assert_eq!(Cursor::decode(bad), Err(BadCursor), "{bad:?}");
        }
        let path_trick = URL_SAFE_NO_PAD.encode(br#"{"v":1,"n":{"../x":[1,2]}}"#);
        assert_eq!(Cursor::decode(&path_trick), Err(BadCursor));
    }
}
