//! Recording copies: one index write per batch of entries keeps the index
//! cost per copied object small; each copier hears back whether its entry
//! was recorded or its claim had been lost.

use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::index::{CacheIndex, Completion, Entry, IndexError};

/// Entries most written per index call.
const BATCH: usize = 256;

/// Where copiers send their entries, each with the channel for its answer.
pub(super) type EntrySender = mpsc::Sender<(Entry, oneshot::Sender<Completion>)>;

/// The entry writer of one warm: records copied objects as `owner` (the
/// attempt whose claims they were copied under).
pub(super) struct EntryWriter<'a> {
    pub index: &'a dyn CacheIndex,
    pub owner: &'a str,
}

impl EntryWriter<'_> {
    /// Records entries from `rx` in batches until every copier is done.
    pub async fn write(
        &self,
        mut rx: mpsc::Receiver<(Entry, oneshot::Sender<Completion>)>,
    ) -> Result<(), IndexError> {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            if rx.recv_many(&mut batch, BATCH).await == 0 {
                return Ok(());
            }
            let (entries, replies): (Vec<Entry>, Vec<_>) = batch.drain(..).unzip();
            // A batch of finished copies, as one span of the warm's trace
            // (its index write beneath it).
            let bytes: u64 = entries.iter().map(|e| e.size).sum();
            let span = tracing::debug_span!(
                "copy_batch",
                otel.name = "copy_batch",
                objects = entries.len(),
                bytes
            );
            let outcomes = self
                .index
                .complete_copies(&entries, self.owner)
                .instrument(span)
                .await?;
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                // A copier that is gone no longer cares.
                let _ = reply.send(outcome);
            }
        }
    }
}
