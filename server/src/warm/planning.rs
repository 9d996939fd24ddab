//! Merging the listing with the index: each page is decided key by key
//! (hit, copy, wait for another holder, or fail), what must be copied is
//! claimed in one batch, and the tasks are queued to the copiers.

use std::ops::Bound;

use tokio::sync::mpsc;

use expresscache::WarmSpec;

use super::claims::KeyClaims;
use super::empty::EmptyPrefixes;
use super::listing::Page;
use super::task::CopyTask;
use super::WarmError;
use crate::index::{ClaimOutcome, Record, RecordCursor};
use crate::plan::{Decision, Planner};
use crate::progress::Progress;
use crate::store::ObjectMeta;

/// What a page held besides the keys to copy.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct PageCounts {
    pub hits: u64,
    pub hit_bytes: u64,
    /// Keys that cannot be warmed (KeyClash, KeyTooLong).
    pub refused: u64,
}

/// Decides the keys of each listed page against the index and claims the
/// ones to copy: what triage uses of the warm.
pub(super) struct Triage<'a> {
    pub claims: &'a KeyClaims<'a>,
    pub spec: &'a WarmSpec,
    pub progress: &'a Progress,
    /// The requested prefixes no listed key fell under yet.
    pub empty: &'a EmptyPrefixes,
}

impl Triage<'_> {
    /// Decides each key of `page` against the index (one ordered read of
    /// the page's key range): counts hits, fails what cannot be copied, and
    /// returns the rest as tasks, with what the page held.
    pub async fn page(
        &self,
        page: &Page,
    ) -> Result<(Vec<CopyTask>, PageCounts), WarmError> {
        let progress = self.progress;
        self.empty.observe(&page.objects);
        Progress::add(&progress.listed, page.objects.len() as u64);
        Progress::add(
            &progress.bytes_listed,
            page.objects.iter().map(|o| o.size).sum(),
        );
        let planner = Planner {
            source_bucket: self.spec.source.as_str(),
            owner: self.claims.owner,
            force: self.spec.force_copy,
            now: self.claims.takeover_now(),
        };
        let dest_prefix = self.spec.dest_key(&page.prefix);
        let dest_of = |o: Option<&ObjectMeta>| o.map(|o| self.spec.dest_key(&o.key));
        let (Some(first), Some(last)) =
            (dest_of(page.objects.first()), dest_of(page.objects.last()))
        else {
            return Ok((Vec::new(), PageCounts::default()));
        };
        let mut counts = PageCounts::default();
        let mut records = RecordCursor::new(
            self.claims.index,
            self.claims.dir,
            &dest_prefix,
            Bound::Included(first),
            &last,
        );
        let mut tasks = Vec::new();
        for obj in &page.objects {
            let dest_key = self.spec.dest_key(&obj.key);
            let record = records.seek(&dest_key).await?;
            tasks.extend(self.decide_one(&planner, obj, dest_key, record.as_ref(), &mut counts));
        }
        Ok((tasks, counts))
    }

    /// What one listed object becomes, given its index record: a hit or a
    /// refusal (counted in `counts`, and a refusal failed), or a task to
    /// copy it or wait for another holder.
    fn decide_one(
        &self,
        planner: &Planner<'_>,
        obj: &ObjectMeta,
        dest_key: String,
        record: Option<&Record>,
        counts: &mut PageCounts,
    ) -> Option<CopyTask> {
        let progress = self.progress;
        let wait_for = match planner.decide(obj, record) {
            Decision::Hit => {
                Progress::add(&progress.hits, 1);
                counts.hits += 1;
                counts.hit_bytes += obj.size;
                return None;
            }
            Decision::Clash { cached_from } => {
                counts.refused += 1;
                progress.fail(
                    &obj.key,
                    "KeyClash",
                    format!(
                        "{}/{dest_key} is already cached from {cached_from}; \
                         evict it first, or use a destination_prefix",
                        self.claims.dir
                    ),
                );
                return None;
            }
            Decision::Copy(_) => None,
            Decision::Wait(claim) => Some(claim),
        };
        if dest_key.len() > crate::core::limits::MAX_KEY_BYTES {
            counts.refused += 1;
            progress.fail(
                &obj.key,
                "KeyTooLong",
                format!(
                    "destination key would be {} bytes; S3 allows 1024",
                    dest_key.len()
                ),
            );
            return None;
        }
        Progress::add(&progress.to_copy, 1);
        Progress::add(&progress.bytes_to_copy, obj.size);
        Some(CopyTask {
            object: obj.clone(),
            dest_key,
            wait_for,
            claimed_at: None,
        })
    }

    /// Claims every task's key that nobody else was seen holding, in one
    /// index round trip; a key someone else holds becomes a wait.
    pub async fn claim(&self, mut tasks: Vec<CopyTask>) -> Result<Vec<CopyTask>, WarmError> {
        let to_claim: Vec<String> = tasks
            .iter()
            .filter(|t| t.wait_for.is_none())
            .map(|t| t.dest_key.clone())
            .collect();
        if to_claim.is_empty() {
            return Ok(tasks);
        }
        let now = self.claims.clock.now();
        let outcomes = self.claims.claim_all(&to_claim).await?;
        let mut outcomes = outcomes.into_iter();
        for t in tasks.iter_mut().filter(|t| t.wait_for.is_none()) {
            match outcomes.next() {
                Some(ClaimOutcome::Claimed) => t.claimed_at = Some(now),
                Some(ClaimOutcome::Held(c)) => t.wait_for = Some(c),
                None => {}
            }
        }
        Ok(tasks)
    }

    /// Queues the tasks for the copiers; if the copiers are gone (the warm
    /// is ending), gives back the claims the tasks hold.
    pub async fn dispatch(&self, batch: Vec<CopyTask>, tasks: &mpsc::Sender<CopyTask>) {
        for task in batch {
            if let Err(mpsc::error::SendError(task)) = tasks.send(task).await {
                if task.claimed_at.is_some() {
                    self.claims.release(&task.dest_key).await;
                }
            }
        }
    }
}
