//! Taking over operations nobody runs any more: the replica that ran them
//! crashed, was paused or cut off past its run deadline, or released them
//! on a graceful shutdown. Every replica looks every `adopt_every`; the
//! log's conditional takeover lets exactly one win each operation.

use std::sync::Arc;

use super::Operations;
use crate::core::operation::{OperationRecord, Outcome};
use crate::index::{IndexError, OpFilter};
use crate::progress::Progress;

/// Operations read per page while looking.
const PAGE: usize = 100;

impl Operations {
    /// Takes over and resumes every unfinished operation whose run lapsed
    /// (already-copied objects are hits, so what is left is what was not
    /// done). Returns how many it resumed.
    pub async fn adopt_orphans(self: &Arc<Self>) -> Result<usize, IndexError> {
        // A fast clock would see live runs as lapsed.
        if let Err(why) = crate::skew::global().check(self.settings.skew_margin) {
            tracing::warn!(reason = %why, "not taking over unfinished warms");
            return Ok(0);
        }
        let mut resumed = 0;
        let mut after = None;
        loop {
            if *self.draining.borrow() {
                return Ok(resumed);
            }
            let page = self
                .index()
                .list_operations(OpFilter::Running, after.clone(), PAGE)
                .await?;
            after = page.last().map(|r| (r.created_at, r.id.clone()));
            // Only an empty page ends the scan: a backend may answer a
            // short page before the end (DynamoDB drops filtered items
            // from a page and goes on from where it stopped).
            let more = !page.is_empty();
            let (_, judged) = self.now();
            for rec in page {
                let lapsed = rec.run.as_ref().is_none_or(|r| r.deadline <= judged);
                if !lapsed || self.live().contains_key(&rec.id) {
                    continue;
                }
                let id = rec.id.clone();
                match self.adopt(rec).await {
                    Ok(true) => resumed += 1,
                    Ok(false) => {}
                    // One operation's trouble must not stop the others'
                    // takeover; the next scan tries it again.
                    Err(e) => tracing::warn!(operation_id = %id, error = %e,
                        "could not take over an unfinished warm"),
                }
            }
            if !more {
                return Ok(resumed);
            }
        }
    }

    /// Takes `rec` over; resumes it unless a cancel was requested, it has
    /// crashed servers too often, or it no longer fits this server's
    /// limits (then ends it so). Returns whether it resumed it.
    async fn adopt(self: &Arc<Self>, mut rec: OperationRecord) -> Result<bool, IndexError> {
        // A draining server takes nothing over: drain would not wait for it.
        if *self.draining.borrow() {
            return Ok(false);
        }
        // A fast clock sees live runs as lapsed: measured afresh against
        // the warm's destination before judging.
        if let Err(why) = crate::skew::check_against(
            self.warmer.store.as_ref(),
            rec.request.directory_bucket.as_str(),
            self.settings.skew_margin,
        )
        .await
        {
            tracing::warn!(operation_id = %rec.id, reason = %why, "not taking over an unfinished warm");
            return Ok(false);
        }
        let terms = self.run_terms();
        let granted_until = terms.deadline;
        let Some(t) = self.index().take_over(&rec.id, &terms).await? else {
            return Ok(false); // another replica was quicker, or it finished
        };
        let id = rec.id.clone();
        let end = |outcome, error: Option<String>| rec.state.clone().ended(outcome, error);
        let ended = if t.cancel_requested {
            Some(end(Outcome::Cancelled, None))
        } else if t.crashes > self.settings.max_resumptions {
            // Only crashes count: rolling restarts interrupt long warms
            // cleanly, and those must go on however often it happens.
            let reason = format!(
                "not resumed: a server stopped without a clean shutdown {} times while running \
                 it (the limit is {}); it may be what crashes the server, see its log",
                t.crashes, self.settings.max_resumptions
            );
            tracing::error!(operation_id = %id, crashes = t.crashes, "{reason}");
            Some(end(Outcome::Failed, Some(reason)))
        } else if let Err(e) = rec.request.within(&self.limits) {
            Some(end(
                Outcome::Failed,
                Some(format!("cannot resume under this server's limits: {e}")),
            ))
        } else {
            None
        };
        if let Some(last) = ended {
            self.index().update_operation(&id, &t.ticket, &last).await?;
            return Ok(false);
        }
        // Only shown to callers: failing to count it must not leave the
        // run just taken over to lapse (that would count a crash).
        rec.resumptions = match self.index().mark_resumed(&id).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(operation_id = %id, error = %e, "could not count the resumption");
                rec.resumptions.saturating_add(1)
            }
        };
        tracing::info!(operation_id = %id, attempt = t.ticket.attempt, resumptions = rec.resumptions,
            "taking over an unfinished warm");
        let (progress, _rx) = Progress::new(id, Arc::clone(&self.warmer.clock));
        // The leases the earlier attempts wrote are this attempt's: an
        // Evict that ended one ends this attempt too, as it would have
        // ended theirs, instead of a fresh write reviving it.
        for (prefix, epoch) in &rec.state.lease_epochs {
            progress.add_lease_epoch(prefix, epoch);
        }
        // A job the previous attempt created is followed, not made again.
        if let Some(job) = &rec.state.batch_job_id {
            progress.set_batch_job(Some(job));
        }
        let spec = rec.request.clone();
        let place = self.admission.admit_resumed(rec.owner.as_deref());
        self.start(rec, spec, progress, t.ticket, granted_until, place);
        Ok(true)
    }
}
