//! Recording copies: one index write per batch of entries keeps the index
//! cost per copied object small; each copier hears back whether its entry
//! was recorded or its claim had been lost.

use tokio::sync::{mpsc, oneshot};

use super::run::WarmRun;
use crate::index::{CacheIndex, Completion, Entry, IndexError};
use crate::store::ObjectStore;

/// Entries most written per index call.
const BATCH: usize = 256;

/// Where copiers send their entries, each with the channel for its answer.
pub(super) type EntrySender = mpsc::Sender<(Entry, oneshot::Sender<Completion>)>;

impl<S: ObjectStore, I: CacheIndex> WarmRun<'_, S, I> {
    /// Records entries from `rx` in batches until every copier is done.
    pub async fn write_entries(
        &self,
        mut rx: mpsc::Receiver<(Entry, oneshot::Sender<Completion>)>,
    ) -> Result<(), IndexError> {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            if rx.recv_many(&mut batch, BATCH).await == 0 {
                return Ok(());
            }
            let (entries, replies): (Vec<Entry>, Vec<_>) = batch.drain(..).unzip();
            let outcomes = self.w.index.complete_copies(&entries, self.owner).await?;
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                // A copier that is gone no longer cares.
                let _ = reply.send(outcome);
            }
        }
    }
}
