//! Taking over operations nobody runs any more: the replica that ran them
//! crashed, was paused or cut off past its run deadline, or released them
//! on a graceful shutdown. Every replica looks every `adopt_every`; the
//! log's conditional takeover lets exactly one win each operation.
//!
//! A look lists the unfinished operations' ids (cheap: DynamoDB's status
//! index) and reads in full only those whose run may have lapsed by what
//! this replica last read of them ([`RunsSeen`]): a run held by a live
//! replica until a deadline still ahead is not read again until that
//! deadline passes. A herd of running warms then costs each replica one
//! consistent read per operation (again only once its deadline passed or
//! a replica left the registry), not one per look.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;

use super::Operations;
use crate::core::operation::{OperationRecord, Outcome};
use crate::index::{span_millis, IndexError, Millis};
use crate::progress::Progress;

/// Operation ids listed per page while looking.
const PAGE: usize = 1000;

/// Operation records read at once while looking.
const READS_IN_FLIGHT: usize = 16;

/// What this replica last read of other replicas' runs, and which
/// replicas are alive (from its heartbeat): enough to tell, without
/// reading an operation again, that its run cannot have lapsed yet.
#[derive(Debug, Default)]
pub(super) struct RunsSeen {
    /// Operation id -> (the replica holding its run, the run's deadline).
    runs: Mutex<HashMap<String, (String, Millis)>>,
    /// The live replicas at the last heartbeat (none known before it).
    replicas: Mutex<HashSet<String>>,
    /// Replicas seen to leave the registry so far, and how many had left
    /// when the last whole look began: a look that follows a departure
    /// reads the young operations too (a replica that stops releases its
    /// runs, taken over at the next look, however young).
    departures: AtomicU64,
    departures_judged: AtomicU64,
}

impl RunsSeen {
    fn runs(&self) -> MutexGuard<'_, HashMap<String, (String, Millis)>> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the replicas the registry holds alive.
    pub(super) fn set_replicas(&self, live: &[String]) {
        let live: HashSet<String> = live.iter().cloned().collect();
        let departed = {
            let mut replicas = self.replicas.lock().unwrap_or_else(|e| e.into_inner());
            let departed = replicas.iter().any(|r| !live.contains(r));
            *replicas = live;
            departed
        };
        // Not under the replicas' lock: `must_read` takes the runs' lock
        // first, then that one.
        if departed {
            self.departures.fetch_add(1, Ordering::SeqCst);
            self.runs().clear();
        }
    }

    /// A look beginning now. It may leave young operations unread only if
    /// the registry answered the last heartbeat (none known: it did not,
    /// or none came yet) and no replica left it since the last whole look
    /// began.
    fn begin_look(&self, run_ttl: Duration) -> Look {
        let departures = self.departures.load(Ordering::SeqCst);
        let registry_known = !self
            .replicas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty();
        Look {
            judged: 0,
            run_ttl,
            young_may_wait: registry_known
                && departures == self.departures_judged.load(Ordering::SeqCst),
            departures,
        }
    }

    /// Whether operation `id` must be read to judge its run at `judged`:
    /// unless it was read before, held by another replica that is still
    /// registered alive, until a deadline after `judged`. A run's deadline
    /// only moves later while one replica holds it; a release sets it to
    /// zero, and whoever takes a run over then holds it alive in the
    /// registry or leaves it (see [`saw`](Self::saw)). A replica that stops on purpose releases its
    /// runs and then leaves the registry, so its runs are read at the next
    /// look.
    ///
    /// An operation never read is read once its first run lease, counted
    /// from its creation (`created_at`, which the listing carries), may
    /// have passed: younger, its run cannot have lapsed, only been
    /// released. A replica that stops releases its runs and leaves the
    /// registry, and after a departure young operations are read at once
    /// (`Look::young_may_wait` false); a run released by a replica that stays up
    /// (handed on) is taken over once that first lease has passed, as an
    /// older one is once the deadline kept passes. A job array's burst of
    /// warms then costs each replica no read of the ones that finish
    /// within a run lease.
    fn must_read(&self, id: &str, created_at: Millis, me: &str, look: &Look) -> bool {
        let runs = self.runs();
        let Some((holder, deadline)) = runs.get(id) else {
            return !look.young_may_wait
                || created_at.saturating_add(span_millis(look.run_ttl)) <= look.judged;
        };
        let judged = look.judged;
        let alive = || {
            let replicas = self.replicas.lock().unwrap_or_else(|e| e.into_inner());
            replicas.contains(holder)
        };
        holder == me || *deadline <= judged || !alive()
    }

    /// Remembers what `rec`'s run was when read: who holds it until when.
    /// The holder may release the run (a joiner's lasts six run leases)
    /// and another replica take it over for one run lease, then die or
    /// pause: that replica's heartbeat then lapses, it leaves the registry,
    /// and [`set_replicas`](Self::set_replicas) forgets every run seen, so
    /// each is read again. (Before, the deadline kept was capped at one
    /// run lease from the read, which made every replica read each of a
    /// job array's joiners again every run lease.)
    fn saw(&self, rec: &OperationRecord) {
        let mut runs = self.runs();
        match &rec.run {
            Some(run) if !rec.is_done() => {
                runs.insert(rec.id.clone(), (run.ticket.replica.clone(), run.deadline));
            }
            _ => {
                runs.remove(&rec.id);
            }
        }
    }

    /// After a whole look: forgets the operations it did not list
    /// (finished), and the departures seen before it began.
    fn looked(&self, listed: &HashSet<String>, look: &Look) {
        self.runs().retain(|id, _| listed.contains(id));
        self.departures_judged
            .store(look.departures, Ordering::SeqCst);
    }
}

/// What one look judges by.
struct Look {
    /// Now by this replica's clock, less the skew margin.
    judged: Millis,
    run_ttl: Duration,
    /// See [`RunsSeen::must_read`].
    young_may_wait: bool,
    /// [`RunsSeen`]'s departures when the look began.
    departures: u64,
}

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
        let mut look = self.seen.begin_look(self.settings.run_ttl);
        let mut resumed = 0;
        let mut after = None;
        let mut listed = HashSet::new();
        // A record that could not be read is judged at the next look; the
        // others are judged now, and the look ends with the first error.
        let mut failed = None;
        loop {
            if *self.draining.borrow() {
                return Ok(resumed);
            }
            let page = self.index().unfinished_operations(after.clone(), PAGE).await?;
            after = page.last().cloned();
            // Only an empty page ends the scan: a backend may answer a
            // short page before the end.
            if page.is_empty() {
                return match failed {
                    None => {
                        self.seen.looked(&listed, &look);
                        Ok(resumed)
                    }
                    Some(e) => Err(e),
                };
            }
            let (_, judged) = self.now();
            look.judged = judged;
            let me = self.settings.replica.as_str();
            let to_read: Vec<String> = page
                .into_iter()
                .inspect(|(_, id)| {
                    listed.insert(id.clone());
                })
                .filter(|(created, id)| {
                    !self.live().contains_key(id) && self.seen.must_read(id, *created, me, &look)
                })
                .map(|(_, id)| id)
                .collect();
            for (got, id) in self.read_all(to_read).await {
                let rec = match got {
                    Ok(Some(rec)) => rec,
                    Ok(None) => continue, // purged since it was listed
                    // One unreadable record must not stop the others'
                    // takeover.
                    Err(IndexError::Corrupt(e)) => {
                        tracing::error!(operation_id = %id, error = %e,
                            "skipping an unreadable operation");
                        continue;
                    }
                    Err(e) => {
                        tracing::debug!(operation_id = %id, error = %e,
                            "could not read an unfinished warm; judging it at the next look");
                        failed.get_or_insert(e);
                        continue;
                    }
                };
                self.seen.saw(&rec);
                let lapsed = rec.run.as_ref().is_none_or(|r| r.deadline <= judged);
                if rec.is_done() || !lapsed || self.live().contains_key(&rec.id) {
                    continue;
                }
                match self.adopt(rec).await {
                    Ok(true) => resumed += 1,
                    Ok(false) => {}
                    // One operation's trouble must not stop the others'
                    // takeover; the next scan tries it again.
                    Err(e) => tracing::warn!(operation_id = %id, error = %e,
                        "could not take over an unfinished warm"),
                }
            }
        }
    }

    /// The records of `ids`, [`READS_IN_FLIGHT`] at a time, each with
    /// its id.
    async fn read_all(
        &self,
        ids: Vec<String>,
    ) -> Vec<(Result<Option<OperationRecord>, IndexError>, String)> {
        futures::stream::iter(ids)
            .map(|id| async move { (self.index().get_operation(&id).await, id) })
            .buffered(READS_IN_FLIGHT)
            .collect()
            .await
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
