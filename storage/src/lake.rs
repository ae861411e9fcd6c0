//! The lake: object storage that receives the Parquet files.
//!
//! One URL chooses the store: a plain path or `file:///abs/path` (local directory, the default),
//! `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`, or `memory://` (tests).
//! Cloud credentials and endpoints come from the usual environment variables of each provider
//! (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, `GOOGLE_SERVICE_ACCOUNT`,
//! `AZURE_STORAGE_ACCOUNT_NAME`, ...), read by `object_store`'s builders.
//!
//! Local files are synced to disk after each upload: the WAL segments holding their events are
//! deleted afterwards, so the file must survive a power loss on its own.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    BackoffConfig, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart,
};

/// Retries inside one upload attempt. Kept short: the shipper retries failed uploads forever
/// with its own backoff, and a long inner retry would hide an outage from `/readyz`.
fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: std::time::Duration::from_millis(100),
            max_backoff: std::time::Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 3,
        retry_timeout: std::time::Duration::from_secs(15),
    }
}

/// Files larger than this are uploaded in parts ...
const MULTIPART_THRESHOLD: usize = 16 << 20;
/// ... of this size.
const PART_BYTES: usize = 8 << 20;

/// Errors of the lake.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    #[error("object store URL {url:?} is not usable: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("object storage: {0}")]
    Store(#[from] object_store::Error),
    #[error("syncing {path}: {source}")]
    Sync {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Object storage plus the prefix under which Sluice writes.
#[derive(Clone, Debug)]
pub struct Lake {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// Root directory when the lake is local, for syncing files.
    local_root: Option<PathBuf>,
    url: String,
    /// [`MULTIPART_THRESHOLD`] and [`PART_BYTES`]; smaller in tests, to cut small files in parts.
    multipart: (usize, usize),
}

impl Lake {
    /// Opens the store named by `spec` (see the module documentation).
    pub fn open(spec: &str) -> Result<Lake, LakeError> {
        let bad = |reason: String| LakeError::BadUrl {
            url: spec.to_owned(),
            reason,
        };
        let (scheme, rest) = match spec.split_once("://") {
            Some((scheme, rest)) => (scheme, rest),
            None => ("file", spec),
        };
        let (bucket, prefix) = match rest.split_once('/') {
            Some((bucket, prefix)) => (bucket, prefix.trim_matches('/')),
            None => (rest, ""),
        };
        let prefix = Path::from(prefix);
        let lake = |store: Arc<dyn ObjectStore>, prefix: Path| Lake {
            store,
            prefix,
            local_root: None,
            url: spec.to_owned(),
            multipart: (MULTIPART_THRESHOLD, PART_BYTES),
        };
        match scheme {
            "file" => {
                let dir = PathBuf::from(rest);
                if scheme == "file" && spec.contains("://") && !dir.is_absolute() {
                    return Err(bad("file:// URLs need an absolute path".into()));
                }
                std::fs::create_dir_all(&dir).map_err(|e| bad(e.to_string()))?;
                let dir = dir.canonicalize().map_err(|e| bad(e.to_string()))?;
                let store = LocalFileSystem::new_with_prefix(&dir)?;
                Ok(Lake {
                    store: Arc::new(store),
                    prefix: Path::default(),
                    local_root: Some(dir),
                    url: spec.to_owned(),
                    multipart: (MULTIPART_THRESHOLD, PART_BYTES),
                })
            }
            "memory" => Ok(lake(Arc::new(InMemory::new()), Path::default())),
            "s3" | "s3a" => {
                let store = AmazonS3Builder::from_env()
                    .with_retry(retry_config())
                    .with_bucket_name(bucket)
                    .build()?;
                Ok(lake(Arc::new(store), prefix))
            }
            "gs" => {
                let store = GoogleCloudStorageBuilder::from_env()
                    .with_retry(retry_config())
                    .with_bucket_name(bucket)
                    .build()?;
                Ok(lake(Arc::new(store), prefix))
            }
            "az" | "abfs" | "abfss" => {
                let store = MicrosoftAzureBuilder::from_env()
                    .with_retry(retry_config())
                    .with_container_name(bucket)
                    .build()?;
                Ok(lake(Arc::new(store), prefix))
            }
            other => Err(bad(format!(
                "unknown scheme {other:?}; use a path, file://, s3://, gs://, az:// or memory://"
            ))),
        }
    }

    /// A local lake in `root` reached through `store` (which writes there), cutting files over
    /// `multipart_threshold` bytes into parts of `part_bytes`: for tests that put faults
    /// between the shipper and the disk.
    #[cfg(test)]
    pub(crate) fn local_through(
        store: Arc<dyn ObjectStore>,
        root: PathBuf,
        multipart_threshold: usize,
        part_bytes: usize,
    ) -> Lake {
        Lake {
            store,
            prefix: Path::default(),
            url: format!("file://{}", root.display()),
            local_root: Some(root),
            multipart: (multipart_threshold, part_bytes),
        }
    }

    /// The prefix under which every Sluice object lives.
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The URL the lake was opened from.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The local directory behind the lake, when it is local.
    pub fn local_root(&self) -> Option<&FsPath> {
        self.local_root.as_deref()
    }

    /// Writes `data` at `path`, atomically (readers see the whole object or none), durably.
    pub async fn put(&self, path: &Path, data: Bytes) -> Result<(), LakeError> {
        let (threshold, part_bytes) = self.multipart;
        if data.len() > threshold {
            let upload = self.store.put_multipart(path).await?;
            // A failed part or completion aborts the upload (`finish` does), so no part of a
            // failed file is left behind to become visible or cost storage.
            let mut writer = WriteMultipart::new_with_chunk_size(upload, part_bytes);
            writer.put(data);
            writer.finish().await?;
        } else {
            self.store.put(path, PutPayload::from_bytes(data)).await?;
        }
        if let Some(root) = &self.local_root {
            let file = root.join(path.as_ref());
            let sync = |p: &FsPath| std::fs::File::open(p).and_then(|f| f.sync_all());
            let dir = file.parent().map(FsPath::to_path_buf).unwrap_or_default();
            tokio::task::spawn_blocking(move || {
                sync(&file).map_err(|source| LakeError::Sync {
                    path: file.clone(),
                    source,
                })?;
                sync(&dir).map_err(|source| LakeError::Sync { path: dir, source })
            })
            .await
            .map_err(|e| LakeError::Sync {
                path: PathBuf::new(),
                source: std::io::Error::other(e),
            })??;
        }
        Ok(())
    }

    /// Reads the whole object at `path`.
    pub async fn get(&self, path: &Path) -> Result<Bytes, LakeError> {
        Ok(self.store.get(path).await?.bytes().await?)
    }

    /// Deletes every object under `prefix` (e.g. [`crate::layout::workspace_prefix`]) and
    /// returns how many there were. Idempotent: a second call after a partial failure finishes
    /// the job.
    pub async fn delete_all_under(&self, prefix: &Path) -> Result<usize, LakeError> {
        use futures::{StreamExt, TryStreamExt};
        let locations = self
            .store
            .list(Some(prefix))
            .map_ok(|meta| meta.location)
            .boxed();
        let deleted: Vec<Path> = self.store.delete_stream(locations).try_collect().await?;
        Ok(deleted.len())
    }
}

#[cfg(test)]
pub(crate) mod faults;
