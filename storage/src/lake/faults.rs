//! An object store that fails on purpose, for tests: a wrapper around a real store (a
//! `LocalFileSystem` in the shipper's tests) that takes one planned [`Fault`] per upload, in
//! order, and passes everything else through. It needs no hook in product code: the shipper
//! and the lake run as they do in production, over a store that misbehaves the way object
//! storage does.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result, UploadPart,
};

/// What one upload (a put, or a whole multipart upload) runs into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Refused before anything is written, as a 503 would be.
    Fail,
    /// Answered after this delay.
    Slow(Duration),
    /// Never answered: the request hangs until its caller gives up.
    Hang,
    /// Written, then answered with an error: the answer was lost on the way back.
    LoseAnswer,
    /// A multipart upload whose part number `n` (from 0) fails; the other parts are written.
    FailPart(usize),
}

/// One upload as the store saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attempt {
    pub path: Path,
    pub fault: Option<Fault>,
    pub multipart: bool,
}

#[derive(Debug, Default)]
struct Plan {
    faults: VecDeque<Fault>,
    /// Every upload fails while set, whatever `faults` holds.
    down: bool,
    attempts: Vec<Attempt>,
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub(crate) struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    plan: Arc<Mutex<Plan>>,
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

impl FaultyStore {
    pub(crate) fn new(inner: Arc<dyn ObjectStore>) -> Self {
        FaultyStore {
            inner,
            plan: Arc::default(),
        }
    }

    fn plan(&self) -> std::sync::MutexGuard<'_, Plan> {
        self.plan.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next uploads meet `faults`, one each, then the store behaves.
    pub(crate) fn plan_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.plan().faults.extend(faults);
    }

    /// While `down`, every upload fails (an outage of unknown length).
    pub(crate) fn set_down(&self, down: bool) {
        self.plan().down = down;
    }

    /// Planned faults not met yet.
    pub(crate) fn faults_left(&self) -> usize {
        self.plan().faults.len()
    }

    /// Every upload so far, in order.
    pub(crate) fn attempts(&self) -> Vec<Attempt> {
        self.plan().attempts.clone()
    }

    /// The fault for this put: any put fails while the store is down; planned faults and the
    /// list of attempts are about data files only (commit entries, the other objects the
    /// shipper writes, would make each test's plan depend on their interleaving).
    fn next_fault(&self, path: &Path, multipart: bool) -> Option<Fault> {
        let mut plan = self.plan();
        if path.extension() == Some("json") {
            return plan.down.then_some(Fault::Fail);
        }
        let fault = if plan.down {
            Some(Fault::Fail)
        } else {
            plan.faults.pop_front()
        };
        plan.attempts.push(Attempt {
            path: path.clone(),
            fault,
            multipart,
        });
        fault
    }
}

fn injected(what: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "FaultyStore",
        source: format!("injected fault: {what}").into(),
    }
}

#[async_trait::async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        match self.next_fault(location, false) {
            None => self.inner.put_opts(location, payload, opts).await,
            Some(Fault::Fail) => Err(injected("put refused")),
            Some(Fault::Slow(delay)) => {
                tokio::time::sleep(delay).await;
                self.inner.put_opts(location, payload, opts).await
            }
            Some(Fault::Hang) => std::future::pending().await,
            Some(Fault::LoseAnswer) => {
                self.inner.put_opts(location, payload, opts).await?;
                Err(injected("answer lost after the object was written"))
            }
            Some(Fault::FailPart(_)) => panic!("FailPart planned for a single put"),
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let fault = self.next_fault(location, true);
        match fault {
            Some(Fault::Fail) => return Err(injected("multipart upload refused")),
            Some(Fault::Hang) => return std::future::pending().await,
            Some(Fault::Slow(delay)) => tokio::time::sleep(delay).await,
            _ => {}
        }
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(FaultyUpload {
            inner,
            fault,
            parts: 0,
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// A multipart upload meeting its [`Fault`] at a part or at completion.
#[derive(Debug)]
struct FaultyUpload {
    inner: Box<dyn MultipartUpload>,
    fault: Option<Fault>,
    parts: usize,
}

#[async_trait::async_trait]
impl MultipartUpload for FaultyUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let n = self.parts;
        self.parts += 1;
        if self.fault == Some(Fault::FailPart(n)) {
            return Box::pin(async move { Err(injected("part refused")) });
        }
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let done = self.inner.complete().await?;
        if self.fault == Some(Fault::LoseAnswer) {
            return Err(injected("answer lost after the upload completed"));
        }
        Ok(done)
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}
