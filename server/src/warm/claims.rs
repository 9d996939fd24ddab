//! The warm's claims on destination keys: the terms it claims with, the
//! renewals that keep a claim while its copy runs, and the release of a
//! key it will not copy. Triage claims whole pages, the settler one key at
//! a time, offload a job's worth; all through this type.

use std::time::Duration;

use futures::stream::{self, StreamExt};

use crate::core::clock::Clock;
use crate::core::judge::Judge;
use crate::index::{
    release_or_lapse, span_millis, CacheIndex, ClaimOutcome, ClaimTerms, IndexError, Millis,
};

/// One warm's claims in its directory bucket, held as operation `owner`.
pub(super) struct KeyClaims<'a> {
    pub index: &'a dyn CacheIndex,
    pub clock: &'a dyn Clock,
    /// The directory bucket, as the index names it.
    pub dir: &'a str,
    /// The claim owner: the operation id.
    pub owner: &'a str,
    /// How long a claim lasts unless renewed (`claim_ttl`).
    pub ttl: Duration,
    pub judge: Judge,
}

impl<'a> KeyClaims<'a> {
    /// "Now" for deciding whether another holder's claim has lapsed: the
    /// clock minus the skew margin, so a claim is taken over only once it
    /// is past its deadline on any clock within the margin of ours.
    pub fn takeover_now(&self) -> Millis {
        self.judge.settled(self.clock.now())
    }

    /// The terms of a claim this warm takes or renews now.
    pub fn terms(&self) -> ClaimTerms<'a> {
        ClaimTerms {
            owner: self.owner,
            deadline: self.clock.now().saturating_add(span_millis(self.ttl)),
            now: self.takeover_now(),
        }
    }

    /// Claims `key`, or answers who holds it.
    pub async fn claim(&self, key: &str) -> Result<ClaimOutcome, IndexError> {
        self.index.claim_copy(self.dir, key, &self.terms()).await
    }

    /// Claims each of `keys` (one round trip).
    pub async fn claim_all(&self, keys: &[String]) -> Result<Vec<ClaimOutcome>, IndexError> {
        self.index.claim_copies(self.dir, keys, &self.terms()).await
    }

    /// How old a claim may get before it is renewed.
    pub fn renew_after(&self) -> Millis {
        span_millis(self.ttl / 4)
    }

    /// Extends this warm's own claim on `key`; false if it was lost.
    pub async fn renew(&self, key: &str) -> Result<bool, IndexError> {
        let deadline = self.terms().deadline;
        self.index
            .renew_claim(self.dir, key, self.owner, deadline)
            .await
    }

    /// Extends this warm's claim on `key` every quarter of the claim TTL,
    /// for as long as it is polled (while the copy runs); stops once the
    /// claim is lost (the completion then finds out and decides again).
    pub async fn keep(&self, key: &str) {
        let every = (self.ttl / 4).max(Duration::from_millis(10));
        loop {
            tokio::time::sleep(every).await;
            match self.renew(key).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(key, "copy claim lost while copying");
                    return std::future::pending().await;
                }
                Err(e) => tracing::warn!(key, error = %e, "could not extend the copy claim"),
            }
        }
    }

    /// Renews this warm's claims on `keys`, `at_once` at a time, every
    /// quarter of the claim TTL, for as long as it is polled.
    pub async fn keep_all(&self, keys: &[String], at_once: usize) {
        let every = (self.ttl / 4).max(Duration::from_millis(10));
        loop {
            tokio::time::sleep(every).await;
            let deadline = self.terms().deadline;
            stream::iter(keys)
                .for_each_concurrent(at_once, |k| async move {
                    if let Err(e) = self.index.renew_claim(self.dir, k, self.owner, deadline).await {
                        tracing::warn!(key = %k, error = %e, "could not extend a claim during the job");
                    }
                })
                .await;
        }
    }

    /// Gives back this warm's claim on `key`.
    pub async fn release(&self, key: &str) {
        release_or_lapse(self.index, self.dir, key, self.owner).await;
    }
}
