//! A warm's leases: written before the index is read, extended while the
//! warm makes progress, and never revived once an Evict ended them. The
//! [`LeaseKeeper`] is the one place a warm's leases are written and
//! renewed: by the warm itself, and by a warm that joined another's work
//! or waits for a running slot.

use std::time::Duration;

use expresscache::WarmSpec;

use super::run::WarmRun;
use super::{WarmError, Warmer};
use crate::index::{span_millis, Lease, Millis};
use crate::progress::Progress;

/// Writes and renews the leases of one warm's request.
#[derive(Debug)]
pub struct LeaseKeeper<'a> {
    pub w: &'a Warmer,
    pub spec: &'a WarmSpec,
    /// Where the epochs of the leases first written are kept, and the
    /// expiry the last write guaranteed.
    pub progress: &'a Progress,
    /// The operation, for the log.
    pub owner: &'a str,
}

impl LeaseKeeper<'_> {
    /// How often a warm's leases are renewed: every half TTL, between
    /// 100 ms and 30 s.
    pub fn every(spec: &WarmSpec) -> Duration {
        (spec.ttl / 2).clamp(Duration::from_millis(100), Duration::from_secs(30))
    }

    /// Extends one lease per requested prefix to max(old, now + ttl). The
    /// progress remembers each lease's epoch from this warm's first write;
    /// later writes extend only that same lease, and a lease that was ended
    /// (by an Evict) or lapsed (and may have been swept) meanwhile is
    /// [`WarmError::LeaseEnded`], not silently revived.
    pub async fn write(&self) -> Result<(), WarmError> {
        let clock = &self.w.clock;
        // What the last write of this warm's leases guaranteed.
        let held_until = self.progress.lease_expiry();
        let expires_at =
            super::lease_writer::coarsen(clock.now().saturating_add(span_millis(self.spec.ttl)));
        let prefixes = self.spec.lease_prefixes();
        let leases: Vec<Lease> = prefixes
            .iter()
            .map(|prefix| {
                let mut lease = Lease::new(
                    self.spec.directory_bucket.as_str(),
                    prefix.as_str(),
                    self.spec.source.as_str(),
                    expires_at,
                );
                if let Some(epoch) = self.progress.lease_epoch(prefix.as_str()) {
                    lease.epoch = epoch;
                }
                lease
            })
            .collect();
        // Strict: expired on our clock is over (the sweeper hands the lease
        // on with a new epoch before deleting, so a renewal that races it
        // is refused either way). All prefixes in one index call, merged
        // with other warms' writes of the same leases on this replica.
        let stored = self
            .w
            .leases
            .extend(&self.w.index, clock, leases.clone())
            .await?;
        // An answer that comes after the leases were due to expire cannot
        // vouch for what happened meanwhile: a renewal resent for minutes
        // (a throttled index) is judged by its send time, and the leases
        // may have lapsed and been swept or evicted under it in between.
        if held_until > 0 && clock.now() >= held_until {
            return Err(WarmError::LeaseEnded {
                prefix: prefixes
                    .first()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            });
        }
        let mut earliest = Millis::MAX;
        for ((prefix, asked), stored) in prefixes.iter().zip(&leases).zip(&stored) {
            if asked.epoch.is_empty() {
                self.progress
                    .add_lease_epoch(prefix.as_str(), &stored.epoch);
            } else if asked.epoch != stored.epoch {
                return Err(WarmError::LeaseEnded {
                    prefix: prefix.to_string(),
                });
            }
            earliest = earliest.min(stored.expires_at);
        }
        self.progress.set_lease_expiry(earliest);
        Ok(())
    }

    /// Renews the leases every [`every`](Self::every) while `alive()`
    /// says the warm is worth keeping (a stuck warm must not keep data
    /// alive forever), until a lease turns out ended: returns why. A
    /// failed renewal is logged and tried again at the next tick.
    pub async fn keep(&self, alive: impl FnMut() -> bool) -> WarmError {
        match self.keep_while(alive, std::future::pending::<()>()).await {
            Ok(()) => unreachable!("a pending future never ends"),
            Err(ended) => ended,
        }
    }

    /// Runs `work` to its end, meanwhile renewing the leases as
    /// [`keep`](Self::keep) does; `Err` if a lease turned out ended first.
    /// A renewal under way finishes before `work` is polled again (so one
    /// that ends with `work` is never cut off half-recorded). A renewal
    /// skipped because the warm was not alive is made as soon as it is
    /// again (looked at every second), not a whole interval later: its
    /// leases may be near their end by then.
    pub async fn keep_while<T>(
        &self,
        mut alive: impl FnMut() -> bool,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T, WarmError> {
        let every = Self::every(self.spec);
        let recheck = every.min(Duration::from_secs(1));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        tick.tick().await;
        tokio::pin!(work);
        let mut owed = false;
        loop {
            tokio::select! {
                v = &mut work => return Ok(v),
                _ = tick.tick(), if !owed => {}
                () = tokio::time::sleep(recheck), if owed => {}
            }
            if !alive() {
                owed = true;
                continue;
            }
            owed = false;
            match self.write().await {
                Ok(()) => {}
                Err(e @ WarmError::LeaseEnded { .. }) => return Err(e),
                Err(e) => {
                    tracing::warn!(operation_id = self.owner, error = %e, "lease renewal failed");
                }
            }
        }
    }
}

impl WarmRun<'_> {
    /// This warm's [`LeaseKeeper`].
    pub fn leases(&self) -> LeaseKeeper<'_> {
        LeaseKeeper {
            w: self.w,
            spec: self.spec,
            progress: self.progress,
            owner: self.owner,
        }
    }

    /// Keeps the leases alive while the warm runs (it can outlast a short
    /// TTL, and nothing it reports ready may expire before it reports it),
    /// but only while it makes progress. Runs until a lease turns out
    /// ended: then stops the warm (what was evicted must not be brought
    /// back behind the caller's back) and returns why.
    pub async fn renew_leases(&self) -> WarmError {
        let mut warned = false;
        let alive = || {
            // Waiting for a copy slot while the engine works for other
            // warms is not being stuck.
            let idle = self.progress.idle().min(self.w.engine.idle());
            let stuck = idle > self.w.settings.stall_limit;
            if stuck && !std::mem::replace(&mut warned, true) {
                tracing::warn!(operation_id = self.owner, idle = ?idle,
                    "warm made no progress; its leases are no longer extended");
            }
            if !stuck {
                warned = false;
            }
            !stuck
        };
        let ended = self.leases().keep(alive).await;
        self.stop.cancel();
        ended
    }
}
