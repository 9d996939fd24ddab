//! Taking one key to its end: wait out another operation's claim if there
//! is one, then either find its copy good (shared) or claim the key and
//! copy it; a claim lost on the way sends the key back to be decided again.

use std::time::Duration;

use expresscache::WarmSpec;

use super::claims::KeyClaims;
use super::task::CopyTask;
use super::writer::EntrySender;
use crate::index::{Claim, ClaimOutcome, IndexError, Millis, Record};
use crate::plan::{Decision, Planner};
use crate::engine::CopyEngine;
use crate::progress::Progress;
use crate::stop::StopSignal;
use crate::store::ObjectMeta;

/// Takes queued keys to their end: what settling uses of the warm.
pub(super) struct Settler<'a> {
    pub claims: &'a KeyClaims<'a>,
    pub engine: &'a CopyEngine,
    pub spec: &'a WarmSpec,
    pub progress: &'a Progress,
    pub stop: &'a StopSignal,
    /// The first pause while waiting out another operation's claim.
    pub wait_poll: Duration,
}

/// How one key ended for this warm.
pub(super) enum KeyOutcome {
    Copied,
    /// Another operation copied it while this one waited.
    Shared,
    Failed {
        code: String,
        message: String,
    },
    /// The warm was stopped before this key was settled.
    Stopped,
}

impl KeyOutcome {
    pub fn index_failure(e: &IndexError) -> Self {
        Self::Failed {
            code: "IndexError".into(),
            message: e.to_string(),
        }
    }

    pub fn writer_gone() -> Self {
        Self::Failed {
            code: "IndexError".into(),
            message: "the index writer stopped; see the warm's error".into(),
        }
    }
}

/// Where one key's settling stands.
enum Step {
    /// Another holder's claim must go first.
    Wait(Claim),
    /// Read the key's record and decide.
    Decide,
    /// Claim the key for this warm.
    Claim,
    /// This warm claimed the key at this time: copy and record it.
    Copy(Millis),
}

/// How a wait for another holder's claim ended.
enum Released {
    /// The claim is gone or void; the key's record as it now stands.
    Now(Option<Box<Record>>),
    /// The warm was stopped while waiting.
    Stopped,
}

/// Where a claimed copy ended.
pub(super) enum CopyEnd {
    /// The key ended (copied, failed or stopped).
    Settled(KeyOutcome),
    /// The claim was lost before or during the copy; nothing was recorded.
    ClaimLost,
}

impl Settler<'_> {
    /// Settles one queued task and counts how it ended.
    pub async fn run_task(&self, task: CopyTask, entries: &EntrySender) {
        if self.stop.is_set() {
            if task.claimed_at.is_some() {
                self.claims.release(&task.dest_key).await;
            }
            return;
        }
        let obj = &task.object;
        let first = match (task.wait_for, task.claimed_at) {
            (Some(claim), _) => Step::Wait(claim),
            (None, Some(at)) => Step::Copy(at),
            (None, None) => Step::Claim,
        };
        let progress = self.progress;
        match self.settle(first, obj, &task.dest_key, entries).await {
            KeyOutcome::Copied => {
                Progress::add(&progress.copied, 1);
                Progress::add(&progress.bytes_copied, obj.size);
            }
            KeyOutcome::Shared => Progress::add(&progress.shared, 1),
            KeyOutcome::Failed { code, message } => progress.fail(&obj.key, &code, message),
            KeyOutcome::Stopped => {}
        }
    }

    /// Steps one key from `step` until it ends. The entry is recorded only
    /// if this warm's claim still holds; if it was lost, the key is decided
    /// again.
    async fn settle(
        &self,
        mut step: Step,
        obj: &ObjectMeta,
        dest_key: &str,
        entries: &EntrySender,
    ) -> KeyOutcome {
        loop {
            let next = match step {
                Step::Wait(claim) => match self.wait_for_release(dest_key, &claim).await {
                    Ok(Released::Now(r)) => self.redecide(obj, dest_key, r.as_deref()),
                    Ok(Released::Stopped) => Err(KeyOutcome::Stopped),
                    Err(e) => Err(KeyOutcome::index_failure(&e)),
                },
                Step::Decide => match self.claims.index.get_record(self.claims.dir, dest_key).await {
                    Ok(r) => self.redecide(obj, dest_key, r.as_ref()),
                    Err(e) => Err(KeyOutcome::index_failure(&e)),
                },
                Step::Claim => self.claim(dest_key).await,
                Step::Copy(claimed_at) => {
                    match self.copy_claimed(obj, dest_key, claimed_at, entries).await {
                        CopyEnd::Settled(outcome) => Err(outcome),
                        CopyEnd::ClaimLost => Ok(Step::Decide),
                    }
                }
            };
            step = match next {
                Ok(step) => step,
                Err(outcome) => return outcome,
            };
        }
    }

    /// Claims `key` for this warm: the next step, or how the key ended.
    async fn claim(&self, key: &str) -> Result<Step, KeyOutcome> {
        match self.claims.claim(key).await {
            Ok(ClaimOutcome::Held(claim)) => Ok(Step::Wait(claim)),
            Ok(ClaimOutcome::Claimed) => Ok(Step::Copy(self.claims.clock.now())),
            Err(e) => Err(KeyOutcome::index_failure(&e)),
        }
    }

    /// What to do with a key whose record is now `record` (after another
    /// holder let go of it, or after this warm lost its claim): the next
    /// step, or how the key ended.
    fn redecide(
        &self,
        obj: &ObjectMeta,
        dest_key: &str,
        record: Option<&Record>,
    ) -> Result<Step, KeyOutcome> {
        let planner = Planner {
            source_bucket: self.spec.source.as_str(),
            owner: self.claims.owner,
            force: false,
            now: self.claims.takeover_now(),
        };
        match planner.decide(obj, record) {
            Decision::Hit => Err(KeyOutcome::Shared),
            Decision::Wait(next) => Ok(Step::Wait(next)),
            Decision::Clash { cached_from } => Err(KeyOutcome::Failed {
                code: "KeyClash".into(),
                message: format!("{}/{dest_key} is now cached from {cached_from}", self.claims.dir),
            }),
            // The other copy failed or was evicted: do it ourselves.
            Decision::Copy(_) => Ok(Step::Claim),
        }
    }

    /// Polls until `claim` on `key` is gone, void, or ours; answers the
    /// record as it then stands.
    async fn wait_for_release(&self, key: &str, claim: &Claim) -> Result<Released, IndexError> {
        tracing::debug!(key, holder = %claim.owner, "waiting for another operation's claim");
        let mut delay = self.wait_poll;
        loop {
            tokio::time::sleep(delay).await;
            if self.stop.is_set() {
                return Ok(Released::Stopped);
            }
            delay = (delay * 2).min(Duration::from_secs(1));
            let record = self.claims.index.get_record(self.claims.dir, key).await?;
            // Waiting on a live holder is progress of the shared work.
            self.progress.touch();
            let now = self.claims.takeover_now();
            let blocked = record
                .as_ref()
                .and_then(|r| r.claim.as_ref())
                .is_some_and(|c| c.blocks(self.claims.owner, now));
            if !blocked {
                return Ok(Released::Now(record.map(Box::new)));
            }
        }
    }
}
