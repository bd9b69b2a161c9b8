//! Devices taking shared filtered answers (see [`Database::take_shared`]),
//! recorded together: a write of many takes rather than one each.

use std::sync::Arc;

use sync_runtime::SiteId;
use sync_runtime::server::{Replica, SharedBatch};

use crate::error::Result;
#[cfg(doc)]
use crate::store::Database;
use crate::store::{BoxFuture, lock};

/// A replica that records takes of shared answers, on either store.
pub(crate) trait TakeShared: Clone + Send + Sync + 'static {
    /// Which of `readers` take the batch each was given; what each that
    /// takes it holds is recorded before this returns (see
    /// [`Replica::take_shared`]).
    fn take_shared(
        &self,
        readers: Vec<(Arc<SharedBatch>, SiteId)>,
    ) -> BoxFuture<'static, sync_runtime::Result<Vec<bool>>>;
}

impl TakeShared for Replica {
    fn take_shared(
        &self,
        readers: Vec<(Arc<SharedBatch>, SiteId)>,
    ) -> BoxFuture<'static, sync_runtime::Result<Vec<bool>>> {
        let db = self.clone();
        Box::pin(async move { db.take_shared(readers).await })
    }
}

/// The devices waiting to take a shared filtered answer (see
/// [`Database::take_shared`]): the first to come records its take and every
/// one queued meanwhile in one write, then those queued during that write in
/// the next, and so on; the others wait for theirs.
#[derive(Default)]
pub(crate) struct Takes {
    queue: std::sync::Mutex<TakeQueue>,
}

#[derive(Default)]
struct TakeQueue {
    waiting: Vec<(Arc<SharedBatch>, SiteId, tokio::sync::oneshot::Sender<bool>)>,
    /// Whether a task is recording takes.
    recording: bool,
}

impl Takes {
    /// Whether `site` takes `shared`; `false` too when the write failed (the
    /// device then exports on its own, which reports the failure if it
    /// lasts).
    pub(crate) async fn take<D: TakeShared>(
        self: &Arc<Self>,
        db: &D,
        shared: Arc<SharedBatch>,
        site: SiteId,
    ) -> Result<bool> {
        if shared.taken_by_all() {
            return Ok(true);
        }
        let (sender, taken) = tokio::sync::oneshot::channel();
        let lead = {
            let mut queue = lock(&self.queue);
            queue.waiting.push((shared, site, sender));
            !std::mem::replace(&mut queue.recording, true)
        };
        if lead {
            // On a task of its own: the request that started it may be
            // dropped (its device gone) while others wait on it.
            tokio::spawn(Arc::clone(self).record(db.clone()));
        }
        Ok(taken.await.unwrap_or(false))
    }

    /// Records the takes queued, a write at a time, until none is left.
    async fn record<D: TakeShared>(self: Arc<Self>, db: D) {
        // A write that panics leaves the queue to the next take, and the
        // devices waiting on it to exports of their own.
        let _recording = Recording(Arc::clone(&self));
        loop {
            let waiting: Vec<_> = {
                let mut queue = lock(&self.queue);
                if queue.waiting.is_empty() {
                    queue.recording = false;
                    return;
                }
                // At most about MARKS_PER_WRITE marks a write (one take at
                // least): pushes wait for no longer.
                let mut marks = 0;
                let taken = queue
                    .waiting
                    .iter()
                    .take_while(|(shared, ..)| {
                        let first = marks == 0;
                        marks += shared.marks().max(1);
                        first || marks <= MARKS_PER_WRITE
                    })
                    .count();
                queue.waiting.drain(..taken).collect()
            };
            let (readers, senders): (Vec<_>, Vec<_>) = waiting
                .into_iter()
                .map(|(shared, site, sender)| ((shared, site), sender))
                .unzip();
            let taken = db.take_shared(readers).await.unwrap_or_else(|e| {
                tracing::warn!("shared answers could not be taken: {e}");
                Vec::new()
            });
            for (index, sender) in senders.into_iter().enumerate() {
                let _ = sender.send(taken.get(index).copied().unwrap_or(false));
            }
        }
    }
}

/// About the most marks (rows a device is recorded as holding) one write of
/// [`Takes`] records.
const MARKS_PER_WRITE: usize = 16_384;

/// Set while a task records takes; if it panics, the queue is left to the
/// next take and the devices waiting on it export on their own.
struct Recording(Arc<Takes>);

impl Drop for Recording {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut queue = lock(&self.0.queue);
            queue.recording = false;
            queue.waiting.clear();
        }
    }
}
