//! Joining a warm that runs on another replica of a shared index. A warm
//! that leads and must wait (for a running slot, or for the round before
//! it) offers itself in the operation log (`offer_join`, for its attempt);
//! before it lists, it withdraws the offer (`withdraw_join`) and lists only
//! once the withdrawal is recorded. A warm on another replica that no local
//! warm covers looks for an offered warm that covers it, confirms with a
//! consistent read of its record (made after this warm arrived) that the
//! offer stands, and joins it: that warm's listing begins after the read,
//! so after this warm arrived, and ready still means present and current.
//!
//! The offer is the log's, not the checkpoint's: it names the attempt
//! that made it, so a takeover (a new attempt) is never joinable by an
//! old offer, and an offer that lands late (a retried write) after its
//! withdrawal is refused by the log. Only a warm that lists its whole
//! request itself offers (never one that follows another's work).
//!
//! On this replica, the joiners of one remote warm share one reader of its
//! record (every `follow_poll`), and the lookup of offered warms is made
//! once at a time and reused for [`LOOKUP_REUSE`]: a herd costs the log
//! one read per joiner, not a poll per stream. The lookup reads the
//! offered operations themselves, oldest first (`offered_operations`),
//! not the newest running ones: a job array's thousand warms buried its
//! few offered leaders past the newest 200, and every replica led rounds
//! of its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use expresscache::WarmSpec;
use tokio::sync::watch;

use super::round::covers;
use super::Operations;
use crate::core::operation::{OperationRecord, OperationState};
use crate::index::Millis;

/// How long one lookup of joinable warms is reused: a warm it misses
/// leads its own (as without a fleet); a warm it lists is confirmed by a
/// fresh read before anyone joins it.
pub(super) const LOOKUP_REUSE: Duration = Duration::from_secs(1);

/// Offered operations looked at per lookup.
const LOOKUP_LIMIT: usize = 200;

/// What this replica knows of joinable warms on other replicas.
#[derive(Debug, Default)]
pub(super) struct Remote {
    /// The last lookup and when it was made; one lookup at a time.
    found: tokio::sync::Mutex<Option<(tokio::time::Instant, Arc<Vec<OperationRecord>>)>>,
    /// One reader per followed remote operation, shared by its joiners.
    feeds: Arc<Mutex<HashMap<String, watch::Receiver<OperationState>>>>,
    /// Live replicas at the last heartbeat: alone, there is nobody to
    /// look for or offer to, and neither costs an index call.
    replicas: std::sync::atomic::AtomicUsize,
}

impl Remote {
    pub fn set_replicas(&self, n: usize) {
        self.replicas.store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether other replicas shared the index at the last heartbeat.
    pub fn has_peers(&self) -> bool {
        self.replicas.load(std::sync::atomic::Ordering::Relaxed) > 1
    }
}

/// Whether `rec` is a warm of another replica that a warm arriving now
/// may join.
pub(super) fn joinable_elsewhere(rec: &OperationRecord, me: &str, now: Millis) -> bool {
    !rec.is_done()
        && rec.state.phase == crate::core::operation::Phase::Queued
        && rec.run.as_ref().is_some_and(|r| {
            r.joinable && !r.cancel_requested && r.ticket.replica != me && r.deadline > now
        })
}

impl Operations {
    /// A joinable warm of another replica that covers `spec`, confirmed
    /// by a read made now, and a channel of its states.
    pub(super) async fn remote_leader(
        &self,
        id: &str,
        spec: &WarmSpec,
    ) -> Option<(String, watch::Receiver<OperationState>)> {
        if !self.remote.has_peers() {
            return None;
        }
        let me = self.settings.replica.as_str();
        let candidates = match self.joinable_lookup().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(operation_id = id, error = %e,
                    "looking for a warm of the same data on another replica failed; warming alone");
                return None;
            }
        };
        for rec in candidates.iter().filter(|r| covers(&r.request, spec)) {
            let now = self.warmer.clock.now();
            if !joinable_elsewhere(rec, me, now) {
                continue;
            }
            match self.index().get_operation(&rec.id).await {
                Ok(Some(cur))
                    if joinable_elsewhere(&cur, me, now) && covers(&cur.request, spec) =>
                {
                    return Some((cur.id.clone(), self.remote_feed(cur)));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(operation_id = id, candidate = %rec.id, error = %e,
                        "could not confirm a warm on another replica; warming alone");
                    return None;
                }
            }
        }
        None
    }

    /// Running operations that were joinable at the last lookup (made now
    /// if the last is older than [`LOOKUP_REUSE`]).
    pub(super) async fn joinable_lookup(&self) -> Result<Arc<Vec<OperationRecord>>, crate::index::IndexError> {
        let mut found = self.remote.found.lock().await;
        if let Some((at, recs)) = found.as_ref() {
            if at.elapsed() < LOOKUP_REUSE {
                return Ok(Arc::clone(recs));
            }
        }
        let now = self.warmer.clock.now();
        let me = self.settings.replica.as_str();
        let recs: Vec<_> = self
            .index()
            .offered_operations(LOOKUP_LIMIT)
            .await?
            .into_iter()
            .filter(|r| joinable_elsewhere(r, me, now))
            .collect();
        let recs = Arc::new(recs);
        *found = Some((tokio::time::Instant::now(), Arc::clone(&recs)));
        Ok(recs)
    }

    /// The states of remote operation `rec`, from the one reader this
    /// replica keeps for it while anyone follows it.
    pub(super) fn remote_feed(&self, rec: OperationRecord) -> watch::Receiver<OperationState> {
        let feeds = Arc::clone(&self.remote.feeds);
        let mut map = feeds.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = map.get(&rec.id) {
            // Closed: its reader ended (the operation finished meanwhile);
            // a new one reads the final state.
            if rx.has_changed().is_ok() {
                return rx.clone();
            }
        }
        let id = rec.id.clone();
        let (tx, rx) = watch::channel(rec.state);
        map.insert(id.clone(), rx.clone());
        drop(map);
        let index = Arc::clone(&self.index);
        let poll = self.settings.follow_poll;
        let mine = rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(poll).await;
                {
                    // Nobody left but the registry: stop reading.
                    let mut map = feeds.lock().unwrap_or_else(|e| e.into_inner());
                    if tx.receiver_count() <= 2 {
                        if map.get(&id).is_some_and(|r| r.same_channel(&mine)) {
                            map.remove(&id);
                        }
                        return;
                    }
                }
                match index.get_operation(&id).await {
                    Ok(Some(rec)) => {
                        let done = rec.is_done();
                        tx.send_if_modified(|s| {
                            let changed = *s != rec.state;
                            *s = rec.state;
                            changed
                        });
                        if done {
                            break;
                        }
                    }
                    // Purged: its joiners go on without it.
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(operation_id = %id, error = %e,
                            "reading a joined warm on another replica failed; retrying");
                    }
                }
            }
            let mut map = feeds.lock().unwrap_or_else(|e| e.into_inner());
            if map.get(&id).is_some_and(|r| r.same_channel(&mine)) {
                map.remove(&id);
            }
        });
        rx
    }
}
