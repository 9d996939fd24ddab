//! Being one of the fleet: every `adopt_every` this replica says it is
//! alive (until now + `run_ttl`) and counts the live replicas, so the copy
//! engine takes only its share of each bucket's request budget.

use super::Operations;
use crate::index::{span_millis, IndexError};

impl Operations {
    /// One heartbeat: records this replica as alive and shares the budget
    /// among the live replicas; returns how many there are.
    pub async fn heartbeat(&self) -> Result<usize, IndexError> {
        let (now, judged) = self.now();
        let replica = &self.settings.replica;
        let deadline = now.saturating_add(span_millis(self.settings.run_ttl));
        // Until the registry answers again, no replica is taken for alive
        // by the look for lapsed runs (it reads every run instead).
        let forget = |e| {
            self.seen.set_replicas(&[]);
            e
        };
        self.index()
            .heartbeat(replica, deadline)
            .await
            .map_err(forget)?;
        // Judged with the skew margin: a replica whose clock runs behind
        // still counts, so together they stay within the budget.
        let live = self.index().live_replicas(judged).await.map_err(forget)?;
        let n = live.len().max(1);
        self.warmer.engine.set_replicas(n);
        self.remote.set_replicas(live.len());
        self.seen.set_replicas(&live);
        Ok(n)
    }

    /// Leaves the fleet (on shutdown): the others take its share at once.
    pub async fn leave(&self) {
        if let Err(e) = self.index().leave(&self.settings.replica).await {
            tracing::warn!(error = %e, "could not leave the replica registry");
        }
    }
}
