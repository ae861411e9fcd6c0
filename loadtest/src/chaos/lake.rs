//! Reading back what the node stored: every Parquet file under the lake directory, read with
//! the `parquet` crate (an independent reader of the files, not Sluice's writer), each event's
//! key counted; and the commit log export endpoints and webhooks read the lake through, which
//! must name every file (a file it misses is lost to them) and only files that exist.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use arrow_array::{Array, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use serde::Deserialize;

/// What the lake holds.
#[derive(Debug, Default)]
pub struct Stored {
    /// Times each key is stored.
    pub keys: HashMap<u64, u32>,
    /// Events whose payload carries no key of ours.
    pub foreign: u64,
    pub files: u64,
    /// Parquet files no commit-log entry names.
    pub uncommitted_files: u64,
    /// Commit-log entries naming a file that is not there.
    pub dangling_entries: u64,
    /// Rows of quarantine files (counted in `keys` too).
    pub quarantined: u64,
}

#[derive(Deserialize)]
struct Entry {
    path: String,
}

#[derive(Deserialize)]
struct Keyed {
    k: u64,
}

/// Counts the keys in every `.parquet` and `.quarantine` file under `lake`; checks the
/// commit log against the `.parquet` files (quarantine files are not exported, so not in it).
pub fn read(lake: &Path) -> Result<Stored> {
    let mut files = Vec::new();
    walk(lake, &mut files)?;
    let mut quarantine = Vec::new();
    walk_ext(lake, "quarantine", &mut quarantine)?;
    let mut entries = Vec::new();
    walk_ext(lake, "json", &mut entries)?;
    let mut named = std::collections::HashSet::new();
    let mut stored = Stored::default();
    for entry in entries {
        let text = std::fs::read(&entry).with_context(|| format!("reading {}", entry.display()))?;
        let entry: Entry = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a commit entry", entry.display()))?;
        let file = lake.join(&entry.path);
        if !file.is_file() {
            stored.dangling_entries += 1;
        }
        named.insert(file);
    }
    stored.uncommitted_files = files.iter().filter(|f| !named.contains(*f)).count() as u64;
    let events_files = files.len();
    for (n, path) in files.into_iter().chain(quarantine).enumerate() {
        let in_quarantine = n >= events_files;
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .with_context(|| format!("reading the footer of {}", path.display()))?;
        let column = builder
            .schema()
            .index_of("payload")
            .with_context(|| format!("{} has no payload column", path.display()))?;
        let mask = ProjectionMask::roots(builder.parquet_schema(), [column]);
        let reader = builder
            .with_projection(mask)
            .build()
            .with_context(|| format!("reading {}", path.display()))?;
        for batch in reader {
            let batch = batch.with_context(|| format!("decoding {}", path.display()))?;
            let payloads = batch
                .column(0)
                .as_any()
                .downcast_ref::<StringArray>()
                .with_context(|| format!("{}: payload is not a string column", path.display()))?;
            for i in 0..payloads.len() {
                match serde_json::from_str::<Keyed>(payloads.value(i)) {
                    Ok(Keyed { k }) => *stored.keys.entry(k).or_default() += 1,
                    Err(_) => stored.foreign += 1,
                }
            }
            if in_quarantine {
                stored.quarantined += payloads.len() as u64;
            }
        }
        stored.files += 1;
    }
    Ok(stored)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    walk_ext(dir, "parquet", files)
}

fn walk_ext(dir: &Path, extension: &str, files: &mut Vec<PathBuf>) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        // No lake yet: nothing was ever uploaded.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for entry in entries {
        let path = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        if path.is_dir() {
            walk_ext(&path, extension, files)?;
        } else if path.extension().is_some_and(|e| e == extension) {
            files.push(path);
        }
    }
    Ok(())
}
