//! Copying a key this warm holds a claim on: renew a claim that aged in
//! the queue, copy with a heartbeat that keeps the claim alive, then hand
//! the entry to the writer, which records it only if the claim still holds.

use std::sync::atomic::Ordering;

use tokio::sync::oneshot;

use super::settle::{CopyEnd, KeyOutcome, Settler};
use super::writer::EntrySender;
use crate::engine::CopyStats;
use crate::index::{millis_of, Completion, Entry, Millis};
use crate::progress::Progress;
use crate::store::{CopyRequest, ObjectMeta, StoreError};

impl Settler<'_> {
    /// Copies a key this warm claimed at `claimed_at` and records it.
    pub async fn copy_claimed(
        &self,
        obj: &ObjectMeta,
        dest_key: &str,
        claimed_at: Millis,
        entries: &EntrySender,
    ) -> CopyEnd {
        // A claim taken when the page was planned may be old by now (a
        // throttled engine queues copies for long): renew it first.
        if self.claims.clock.now().saturating_sub(claimed_at) >= self.claims.renew_after() {
            match self.claims.renew(dest_key).await {
                Ok(true) => {}
                Ok(false) => return CopyEnd::ClaimLost,
                Err(e) => return CopyEnd::Settled(KeyOutcome::index_failure(&e)),
            }
        }
        let copied = tokio::select! {
            r = self.copy_one(obj, dest_key) => r,
            () = self.claims.keep(dest_key) => unreachable!("the heartbeat never ends"),
        };
        let entry = match copied {
            Ok(entry) => entry,
            Err(e) => {
                self.claims.release(dest_key).await;
                return CopyEnd::Settled(if matches!(e, StoreError::Stopped) {
                    KeyOutcome::Stopped
                } else {
                    KeyOutcome::Failed {
                        code: e.code().to_owned(),
                        message: describe(&e),
                    }
                });
            }
        };
        // The writer records it (and drops the claim) in its next batch;
        // the warm reports ready only after the writer is done.
        let (reply, recorded) = oneshot::channel();
        if entries.send((entry, reply)).await.is_err() {
            return CopyEnd::Settled(KeyOutcome::writer_gone());
        }
        match recorded.await {
            Ok(Completion::Recorded) => CopyEnd::Settled(KeyOutcome::Copied),
            Ok(Completion::ClaimLost) => {
                tracing::warn!(
                    key = dest_key,
                    "claim lost during the copy; deciding the key again"
                );
                CopyEnd::ClaimLost
            }
            Err(_) => CopyEnd::Settled(KeyOutcome::writer_gone()),
        }
    }

    /// One server-side copy through the engine; the entry it would record.
    async fn copy_one(&self, obj: &ObjectMeta, dest_key: &str) -> Result<Entry, StoreError> {
        let spec = self.spec;
        let progress = self.progress;
        let req = CopyRequest {
            source_bucket: spec.source.as_str(),
            source_key: &obj.key,
            source_etag: &obj.etag,
            dest_bucket: self.claims.dir,
            dest_key,
        };
        let stats = CopyStats::with_activity(progress.activity());
        let copied = self.engine.copy(&req, obj.size, &stats, self.stop).await;
        Progress::add(
            &progress.retries,
            u64::from(stats.retries.load(Ordering::Relaxed)),
        );
        Progress::add(
            &progress.throttled,
            u64::from(stats.throttled.load(Ordering::Relaxed)),
        );
        progress.set_concurrency_limit(self.engine.limit_for(self.claims.dir));
        let copied = copied?;
        Ok(Entry {
            directory_bucket: self.claims.dir.to_owned(),
            key: dest_key.to_owned(),
            source_bucket: spec.source.to_string(),
            source_key: obj.key.clone(),
            source_etag: obj.etag.clone(),
            size: obj.size,
            source_last_modified: obj.last_modified.and_then(millis_of),
            dest_etag: copied.etag,
            cached_at: self.claims.clock.now(),
        })
    }
}

fn describe(e: &StoreError) -> String {
    match e {
        StoreError::PreconditionFailed => {
            "the source object changed after it was listed; warm again to copy the new version"
                .to_owned()
        }
        other => other.to_string(),
    }
}
