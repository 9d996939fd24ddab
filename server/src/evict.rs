//! Deleting from the cache: `Evict` (now, on request) and the expiry sweeper
//! (when leases run out). Both delete only what they proved dead:
//!
//! 1. `begin_evict` claims each key in one atomic index step that fails if a
//!    live lease covers it (unless forced) or another claim is live;
//! 2. the S3 delete is fenced by the entry's destination ETag;
//! 3. `finish_evict` removes the record only if the eviction claim is still
//!    ours.
//!
//! A warm writes its lease before it reads the index and waits out eviction
//! claims, so it either stops the eviction at step 1 or copies afresh after
//! step 3. doc/SEMANTICS.md has the full argument.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use expresscache::EvictSpec;

use crate::core::clock::Clock;
use crate::core::judge::Judge;
use crate::core::operation::{KeyFailure, MAX_INLINE_FAILURES};
use crate::index::{
    span_millis, CacheIndex, ClaimTerms, Entry, EvictDecision, IndexError, KeyRange, Lease, Millis,
    SweepBackoff,
};
use crate::store::{DeleteTarget, ObjectStore, StoreError, DELETE_BATCH};

#[derive(Debug, thiserror::Error)]
pub enum EvictError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("deleting from {bucket}: {source}")]
    Store { bucket: String, source: StoreError },
    /// This replica's clock is too far from S3's to judge what is dead.
    #[error("{0}")]
    ClockSkew(String),
}

/// Whether `e` means the index or S3 did not answer in time (the step may
/// or may not have happened), as opposed to a refusal.
fn unanswered(e: &EvictError) -> bool {
    match e {
        EvictError::Index(IndexError::Unavailable(_)) => true,
        EvictError::Store { source, .. } => source.is_retryable(),
        _ => false,
    }
}

/// Most `kept_under` prefixes reported.
const MAX_KEPT_UNDER: usize = 100;

/// One page's eviction claims: their owner and until when they are ours.
/// Other replicas judge them by the deadline written (`until`, this wall
/// clock's); this replica also counts the claim's span on the monotonic
/// clock from when it was written, so a wall clock set back never makes
/// it think a claim lasts longer than it does. (A host that was suspended
/// is caught by the wall clock: the monotonic one stands still meanwhile.)
#[derive(Debug, Clone, Copy)]
struct Claimed<'a> {
    owner: &'a str,
    until: Millis,
    monotonic_until: std::time::Instant,
}

impl<'a> Claimed<'a> {
    /// Claims written now, until `until` (now plus `ttl` by the wall clock).
    fn from_now(owner: &'a str, until: Millis, ttl: Duration) -> Self {
        Self {
            owner,
            until,
            monotonic_until: std::time::Instant::now() + ttl,
        }
    }

    /// Whether the claims stay ours, beyond the skew margin, for `span`
    /// more by both clocks.
    fn ours_for(&self, clock: &dyn Clock, skew: Duration, span: Duration) -> bool {
        let wall_until = self.until.saturating_sub(span_millis(skew));
        let wall = clock.now().saturating_add(span_millis(span)) < wall_until;
        let monotonic = std::time::Instant::now() + span + skew < self.monotonic_until;
        wall && monotonic
    }
}

/// HEADs in flight at once when an eviction reads the versions its fenced
/// delete found changed.
const HEADS_AT_ONCE: usize = 16;

/// What one pass of deletion did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Tally {
    pub deleted: u64,
    pub bytes: u64,
    /// Kept because a live lease covers them.
    pub kept_live: u64,
    /// Kept because a copy is in flight.
    pub kept_busy: u64,
    pub kept_under: BTreeSet<String>,
    /// The first failed keys (at most [`MAX_INLINE_FAILURES`]); the rest
    /// are logged and counted in `failures_omitted`.
    pub failures: Vec<KeyFailure>,
    pub failures_omitted: u64,
}

impl Tally {
    fn fail(&mut self, failure: KeyFailure) {
        if self.failures.len() < MAX_INLINE_FAILURES {
            self.failures.push(failure);
        } else {
            tracing::warn!(key = %failure.key, code = %failure.code, message = %failure.message,
                "could not delete");
            self.failures_omitted += 1;
        }
    }

    fn failed(&self) -> u64 {
        self.failures.len() as u64 + self.failures_omitted
    }

    fn absorb(&mut self, other: Tally) {
        self.deleted += other.deleted;
        self.bytes += other.bytes;
        self.kept_live += other.kept_live;
        self.kept_busy += other.kept_busy;
        for p in other.kept_under {
            if self.kept_under.len() < MAX_KEPT_UNDER {
                self.kept_under.insert(p);
            }
        }
        self.failures_omitted += other.failures_omitted;
        for f in other.failures {
            self.fail(f);
        }
    }
}

/// What an `Evict` did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct EvictReport {
    pub leases_ended: u64,
    pub forced: bool,
    pub tally: Tally,
    /// Each requested prefix, in request order.
    pub prefixes: Vec<PrefixEviction>,
}

/// What an `Evict` did under one requested prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixEviction {
    pub prefix: String,
    pub deleted: u64,
    pub kept: u64,
    /// Why not every step could be confirmed (`None`: done).
    pub unconfirmed: Option<String>,
}

impl EvictReport {
    /// Objects kept: covered by a live lease, or with a copy in flight.
    pub fn objects_kept(&self) -> u64 {
        self.tally.kept_live + self.tally.kept_busy
    }
}

/// What a sweep did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SweepReport {
    pub leases_expired: u64,
    pub leases_removed: u64,
    pub tally: Tally,
    /// Leases whose sweep failed this pass (each is retried later with
    /// backoff; the others were swept regardless).
    pub lease_failures: Vec<(Lease, String)>,
    /// (directory bucket, prefix) of the leases this pass swept without a
    /// failure.
    pub leases_settled: Vec<(String, String)>,
}

/// Timing of deletions.
#[derive(Debug, Clone)]
pub struct EvictSettings {
    /// How long an eviction claim lasts: a crashed evictor blocks warms of
    /// its keys at most this long (one DeleteObjects call, with retries,
    /// fits well inside it).
    pub claim_ttl: Duration,
    /// How far clocks may disagree: a lease or claim counts as over only
    /// this long past its deadline.
    pub skew_margin: Duration,
    /// Attempts of one DeleteObjects call whose outcome is unknown or
    /// retryable (a lost reply, a 5xx, a throttle).
    pub delete_attempts: u32,
    pub retry_base_delay: Duration,
    /// How long one DeleteObjects attempt may take (the store's request
    /// timeout): a delete whose reply was lost may still land this long
    /// after it was sent.
    pub request_timeout: Duration,
    /// First and longest delay before the sweeper retries a lease it could
    /// not sweep.
    pub sweep_retry_base: Duration,
    pub sweep_retry_max: Duration,
}

impl Default for EvictSettings {
    fn default() -> Self {
        Self::from(&crate::config::Config::default())
    }
}

impl From<&crate::config::Config> for EvictSettings {
    fn from(c: &crate::config::Config) -> Self {
        let delete_attempts = 4;
        let retry_base_delay = Duration::from_millis(200);
        Self {
            claim_ttl: Self::claim_ttl_for(delete_attempts, retry_base_delay, c.s3_request_timeout),
            skew_margin: c.clock_skew_margin,
            delete_attempts,
            retry_base_delay,
            request_timeout: c.s3_request_timeout,
            sweep_retry_base: Duration::from_secs(30),
            sweep_retry_max: Duration::from_secs(3600),
        }
    }
}

impl EvictSettings {
    /// An eviction claim must outlast every attempt of its delete (a warm
    /// that took the key over while a delete could still land would lose
    /// its copy): all attempts at their timeout, the backoffs between them,
    /// and as much again for the index steps and slack; at least 2 minutes.
    pub fn claim_ttl_for(attempts: u32, base: Duration, request_timeout: Duration) -> Duration {
        Self::one_delete_at_most(attempts, base, request_timeout)
            .saturating_mul(2)
            .max(Duration::from_secs(120))
    }

    /// The longest one delete, retried `attempts` times from `base`, can
    /// take: every attempt timing out, every backoff at its ceiling.
    fn one_delete_at_most(attempts: u32, base: Duration, request_timeout: Duration) -> Duration {
        request_timeout.saturating_mul(attempts)
            + expresscache::Backoff::new(base, Duration::MAX).worst_case(attempts.saturating_sub(1))
    }
}

/// Deletes cached objects safely; shared by `Evict` and the sweeper.
#[derive(Debug)]
pub struct Evictor {
    pub store: Arc<dyn ObjectStore>,
    pub index: Arc<dyn CacheIndex>,
    pub clock: Arc<dyn Clock>,
    pub settings: EvictSettings,
}

impl Evictor {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        index: Arc<dyn CacheIndex>,
        clock: Arc<dyn Clock>,
        settings: EvictSettings,
    ) -> Self {
        Self {
            store,
            index,
            clock,
            settings,
        }
    }

    /// "Now" for deciding that a lease or claim is over: the clock minus
    /// the skew margin, so nothing is deleted that a clock within the
    /// margin of ours still sees as live.
    fn settled_now(&self) -> Millis {
        Judge::new(self.settings.skew_margin).settled(self.clock.now())
    }

    /// Whether this replica's clock is close enough to S3's to judge what
    /// has expired (measured afresh against `dir`).
    async fn clock_fits(&self, dir: &str) -> Result<(), EvictError> {
        crate::skew::check_against(self.store.as_ref(), dir, self.settings.skew_margin)
            .await
            .map_err(EvictError::ClockSkew)
    }

    fn deadline(&self) -> Millis {
        self.clock
            .now()
            .saturating_add(span_millis(self.settings.claim_ttl))
    }

    /// Ends the leases at or under each prefix now, then deletes every
    /// object under them that no other live lease covers (all of them with
    /// `force`).
    pub async fn evict(&self, spec: &EvictSpec) -> Result<EvictReport, EvictError> {
        let dir = spec.directory_bucket.as_str();
        self.clock_fits(dir).await?;
        // Ended as of the settled "now", so the deletion below (which sees
        // leases as over only past the skew margin) treats them as over.
        let now = self.settled_now();
        let owner = format!("evict:{}", uuid::Uuid::new_v4());
        let mut report = EvictReport {
            forced: spec.force,
            ..EvictReport::default()
        };
        // Prefix by prefix (disjoint ones: a nested prefix goes with the
        // one it is under): one the index cannot confirm in time does not
        // take the others' outcome with it, and the caller learns which
        // are done, rather than a bare UNAVAILABLE.
        let mut outcomes = Vec::new();
        for cover in expresscache::request::minimal_cover(&spec.prefixes) {
            let before = (
                report.tally.deleted,
                report.tally.kept_live + report.tally.kept_busy,
            );
            let done = async {
                for p in spec.prefixes.iter().filter(|p| cover.covers(p)) {
                    report.leases_ended +=
                        self.index.end_leases(dir, p.as_str(), now).await?.len() as u64;
                }
                self.delete_under(dir, cover.as_str(), &owner, spec.force, &mut report.tally)
                    .await
            }
            .await;
            let unconfirmed = match done {
                Ok(()) => None,
                // Only what waiting can change is unconfirmed; a refusal
                // (access denied, a missing bucket) fails the call as it is.
                Err(e) if unanswered(&e) => {
                    tracing::warn!(prefix = %cover, error = %e,
                        "evicting a prefix could not be confirmed; evicting it again finishes it");
                    Some(e.to_string())
                }
                Err(e) => return Err(e),
            };
            let after = (
                report.tally.deleted,
                report.tally.kept_live + report.tally.kept_busy,
            );
            outcomes.push((cover, after.0 - before.0, after.1 - before.1, unconfirmed));
        }
        report.prefixes = spec
            .prefixes
            .iter()
            .map(|p| {
                let (_, deleted, kept, unconfirmed) = outcomes
                    .iter()
                    .find(|(cover, ..)| cover.covers(p))
                    .cloned()
                    .unwrap_or((p.clone(), 0, 0, None));
                PrefixEviction {
                    prefix: p.to_string(),
                    deleted,
                    kept,
                    unconfirmed,
                }
            })
            .collect();
        Ok(report)
    }

    /// One pass of the expiry sweeper: for each expired lease (past the
    /// skew margin), deletes the objects under it that no live lease
    /// covers, then drops the lease record (unless something under it could
    /// not be settled yet, or a warm revived it meanwhile). A lease that
    /// cannot be swept (its bucket is gone, access is denied) is deferred
    /// with backoff and reported; it never stops the others.
    pub async fn sweep_once(&self) -> Result<SweepReport, EvictError> {
        const BATCH: usize = 100;
        let mut report = SweepReport::default();
        let owner = format!("sweep:{}", uuid::Uuid::new_v4());
        let expired = self.index.expired_leases(self.settled_now(), BATCH).await?;
        if let Some(first) = expired.first() {
            self.clock_fits(&first.directory_bucket).await?;
        }
        for lease in expired {
            report.leases_expired += 1;
            let swept = self.sweep_lease(&lease, &owner).await;
            let failed = match swept {
                Ok((removed, tally)) => {
                    report.leases_removed += u64::from(removed);
                    // Keys S3 refused one by one (denied, changed): the
                    // lease is retried later like a whole failed request,
                    // so it cannot crowd the others out of every pass.
                    let refused = tally.failures.first().map(|f| {
                        format!(
                            "{} objects could not be deleted, e.g. {} ({}: {})",
                            tally.failed(),
                            f.key,
                            f.code,
                            f.message
                        )
                    });
                    report.tally.absorb(tally);
                    refused
                }
                Err(e) => Some(e.to_string()),
            };
            if let Some(error) = failed {
                self.defer(&lease, &error).await;
                report.lease_failures.push((lease, error));
            } else {
                report
                    .leases_settled
                    .push((lease.directory_bucket, lease.prefix));
            }
        }
        Ok(report)
    }

    /// Records a failed sweep of `lease`; the index backs it off by the
    /// attempts it has stored.
    async fn defer(&self, lease: &Lease, error: &str) {
        // Compared with the settled "now" the next passes use.
        let backoff = SweepBackoff {
            now: self.settled_now(),
            base: span_millis(self.settings.sweep_retry_base),
            max: span_millis(self.settings.sweep_retry_max),
        };
        match self.index.defer_sweep(lease, error, &backoff).await {
            Ok(f) => tracing::warn!(directory_bucket = %lease.directory_bucket,
                prefix = %lease.prefix, error, attempts = f.attempts,
                retry_in_ms = f.retry_at.saturating_sub(backoff.now),
                "could not sweep an expired lease; retrying later"),
            Err(e) => tracing::warn!(prefix = %lease.prefix, error = %e,
                sweep_error = error, "could not record the failed sweep"),
        }
    }

    async fn sweep_lease(&self, lease: &Lease, owner: &str) -> Result<(bool, Tally), EvictError> {
        let mut tally = Tally::default();
        self.delete_under(
            &lease.directory_bucket,
            &lease.prefix,
            owner,
            false,
            &mut tally,
        )
        .await?;
        let settled = tally.failed() == 0 && tally.kept_busy == 0;
        let removed = settled
            && self
                .index
                .remove_lease_if_expired(lease, self.settled_now())
                .await?;
        Ok((removed, tally))
    }

    /// Runs the protocol over every cached key under `prefix`.
    async fn delete_under(
        &self,
        dir: &str,
        prefix: &str,
        owner: &str,
        force: bool,
        tally: &mut Tally,
    ) -> Result<(), EvictError> {
        let mut after: Option<String> = None;
        loop {
            let page = self
                .index
                .records(
                    dir,
                    &KeyRange::prefix(prefix).after(after.as_deref()),
                    DELETE_BATCH,
                )
                .await?;
            let Some(last) = page.last().map(|r| r.key.clone()) else {
                return Ok(());
            };
            // A key being copied for the first time has a claim and no
            // entry yet: its copy may land after this pass, so the lease
            // must stay until it is recorded (else the entry would outlive
            // every lease and never be swept).
            let settled = self.settled_now();
            tally.kept_busy += page
                .iter()
                .filter(|r| {
                    r.entry.is_none() && r.claim.as_ref().is_some_and(|c| c.is_live(settled))
                })
                .count() as u64;
            let keys: Vec<String> = page
                .iter()
                .filter(|r| r.entry.is_some())
                .map(|r| r.key.clone())
                .collect();
            after = Some(last);
            if keys.is_empty() {
                continue;
            }
            let claim = Claimed::from_now(owner, self.deadline(), self.settings.claim_ttl);
            let claimed_until = claim.until;
            let decisions = self
                .index
                .begin_evict(
                    dir,
                    &keys,
                    &ClaimTerms {
                        owner,
                        deadline: claimed_until,
                        now: settled,
                    },
                    force,
                )
                .await?;
            let mut marked = Vec::new();
            for d in decisions {
                match d {
                    EvictDecision::Marked(e) => marked.push(e),
                    EvictDecision::Live(p) => {
                        tally.kept_live += 1;
                        if tally.kept_under.len() < MAX_KEPT_UNDER {
                            tally.kept_under.insert(p);
                        }
                    }
                    EvictDecision::Busy(_) => tally.kept_busy += 1,
                    EvictDecision::Absent => {}
                }
            }
            if !marked.is_empty() {
                self.delete_marked(dir, &marked, claim, tally)
                    .await?;
            }
        }
    }

    /// Deletes objects claimed for eviction (fenced by their destination
    /// ETag) and settles their records.
    /// `claim` is the eviction claims' owner and how long they are ours.
    async fn delete_marked(
        &self,
        dir: &str,
        marked: &[Entry],
        claim: Claimed<'_>,
        tally: &mut Tally,
    ) -> Result<(), EvictError> {
        let owner = claim.owner;
        let targets: Vec<DeleteTarget> = marked
            .iter()
            .map(|e| DeleteTarget {
                key: e.key.clone(),
                etag: (!e.dest_etag.is_empty()).then(|| e.dest_etag.clone()),
            })
            .collect();
        let (failures, abandoned) = match self.delete_with_retries(dir, &targets).await {
            Ok(f) => {
                self.delete_unrecorded_versions(dir, f, claim).await
            }
            Err(source) => {
                let keys: Vec<String> = marked.iter().map(|e| e.key.clone()).collect();
                self.abandon(dir, &keys, owner).await;
                return Err(EvictError::Store {
                    bucket: dir.to_owned(),
                    source,
                });
            }
        };
        // A fenced delete of a key that is already gone answers NoSuchKey:
        // gone is what we wanted (an earlier attempt whose reply was lost,
        // or someone else, deleted it).
        let failed: BTreeSet<&str> = failures
            .iter()
            .filter(|f| f.code != "NoSuchKey")
            .map(|f| f.key.as_str())
            .collect();
        let (gone, kept): (Vec<&Entry>, Vec<&Entry>) = marked
            .iter()
            .partition(|e| !failed.contains(e.key.as_str()));
        let gone_keys: Vec<String> = gone.iter().map(|e| e.key.clone()).collect();
        self.index.finish_evict(dir, &gone_keys, owner).await?;
        tally.deleted += gone.len() as u64;
        tally.bytes += gone.iter().map(|e| e.size).sum::<u64>();
        for e in kept.into_iter().filter(|e| !abandoned.contains(&e.key)) {
            crate::index::release_or_lapse(self.index.as_ref(), dir, &e.key, owner).await;
        }
        for f in failures.into_iter().filter(|f| f.code != "NoSuchKey") {
            tally.fail(KeyFailure {
                key: f.key,
                code: f.code,
                message: f.message,
            });
        }
        Ok(())
    }

    /// The delete of `keys` may have happened with its reply lost: marks
    /// their entries unconfirmed (a warm copies the keys again; a later
    /// eviction retries the delete). The last attempt may still land up
    /// to its timeout from now, so the claims lapse only then (counted
    /// from the settled "now": takers-over add the skew margin back, so
    /// they wait exactly the timeout).
    async fn abandon(&self, dir: &str, keys: &[String], owner: &str) {
        let lapse_at = self
            .settled_now()
            .saturating_add(span_millis(self.settings.request_timeout));
        if let Err(e) = self.index.abandon_evict(dir, keys, owner, lapse_at).await {
            // The claims stay live until their deadline, then mean the same.
            tracing::warn!(error = %e, "could not mark abandoned evictions");
        }
    }

    /// Of `failures` (a fenced delete's), those whose key held another
    /// version than its entry records (`PreconditionFailed`) are deleted
    /// again, fenced by the version a HEAD finds; the other failures, and
    /// those that fail again, are returned. Under this eviction claim no
    /// copy can be recorded, so that version is one no entry vouches for:
    /// a copy that landed after the recorded one (a retried request's
    /// first try, a superseded attempt's copy; a directory bucket gives
    /// every copy a new ETag, even of the same bytes). Left alone it would
    /// outlive every lease and fail every sweep. A version written after
    /// the HEAD is still left alone, and reported. The second delete is
    /// sent only while the claims stay ours for all its attempts (by this
    /// clock plus the skew margin, and by the monotonic clock since they
    /// were written: a wall clock set back meanwhile, or a HEAD that hung,
    /// does not extend them): once they may lapse, a warm may take a key
    /// over and record a new copy, which the HEAD could have found.
    /// Also returns the keys whose second delete had an unknown outcome
    /// (abandoned: their claims lapse on their own).
    async fn delete_unrecorded_versions(
        &self,
        dir: &str,
        failures: Vec<crate::store::DeleteFailure>,
        claim: Claimed<'_>,
    ) -> (Vec<crate::store::DeleteFailure>, BTreeSet<String>) {
        let (changed, mut rest): (Vec<_>, Vec<_>) = failures
            .into_iter()
            .partition(|f| f.code == "PreconditionFailed");
        if changed.is_empty() {
            return (rest, BTreeSet::new());
        }
        use futures::StreamExt;
        let found: Vec<_> = futures::stream::iter(changed)
            .map(|f| async move { (self.store.head_object(dir, &f.key).await, f) })
            .buffer_unordered(HEADS_AT_ONCE)
            .collect()
            .await;
        let mut targets = Vec::new();
        let mut kept = Vec::new();
        for (head, f) in found {
            match head {
                Ok(found) => {
                    targets.push(DeleteTarget {
                        key: f.key.clone(),
                        etag: Some(found.etag),
                    });
                    kept.push(f);
                }
                // Gone meanwhile: what the delete wanted.
                Err(StoreError::NoSuchKey(_)) => {}
                Err(e) => {
                    tracing::warn!(key = %f.key, error = %e, "could not read the key's version");
                    rest.push(f);
                }
            }
        }
        if targets.is_empty() {
            return (rest, BTreeSet::new());
        }
        let owner = claim.owner;
        if !claim.ours_for(self.clock.as_ref(), self.settings.skew_margin, self.one_delete_at_most()) {
            tracing::warn!(keys = targets.len(),
                "not deleting versions no entry records: the eviction claims may lapse first");
            rest.extend(kept);
            return (rest, BTreeSet::new());
        }
        for t in &targets {
            tracing::warn!(key = %t.key, etag = t.etag.as_deref().unwrap_or_default(),
                "deleting a version of an evicted key that its entry does not record (a copy \
                 that landed late)");
        }
        match self.delete_with_retries(dir, &targets).await {
            Ok(more) => {
                rest.extend(more);
                (rest, BTreeSet::new())
            }
            // Unknown whether it landed: the key may be empty now, so its
            // entry no longer vouches for it.
            Err(e) => {
                let keys: Vec<String> = targets.iter().map(|t| t.key.clone()).collect();
                self.abandon(dir, &keys, owner).await;
                rest.extend(targets.into_iter().map(|t| crate::store::DeleteFailure {
                    key: t.key,
                    code: e.code().to_owned(),
                    message: e.to_string(),
                }));
                (rest, keys.into_iter().collect())
            }
        }
    }

    /// The longest one [`delete_with_retries`](Self::delete_with_retries)
    /// can take: every attempt timing out, every backoff at its ceiling.
    fn one_delete_at_most(&self) -> Duration {
        let s = &self.settings;
        EvictSettings::one_delete_at_most(s.delete_attempts, s.retry_base_delay, s.request_timeout)
    }

    /// DeleteObjects, retried on retryable errors (the SDK's own retries
    /// are off for the calls the service retries itself). Retrying is safe:
    /// deleting is idempotent, and a fenced delete of a key that is gone
    /// answers NoSuchKey, which counts as deleted.
    async fn delete_with_retries(
        &self,
        dir: &str,
        targets: &[DeleteTarget],
    ) -> Result<Vec<crate::store::DeleteFailure>, StoreError> {
        let mut attempt = 1;
        loop {
            match self.store.delete_objects(dir, targets).await {
                Err(e) if e.is_retryable() && attempt < self.settings.delete_attempts => {
                    let delay =
                        expresscache::Backoff::new(self.settings.retry_base_delay, Duration::MAX)
                            .ceiling(attempt);
                    tracing::debug!(attempt, error = %e, "retrying DeleteObjects");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// Exports one `Evict`.
pub fn export_evict(evicted: &Result<EvictReport, EvictError>) {
    use crate::metrics as m;
    match evicted {
        Ok(r) => {
            metrics::counter!(m::EVICTIONS, "outcome" => "ok").increment(1);
            metrics::counter!(m::OBJECTS_DELETED, "reason" => "evict").increment(r.tally.deleted);
            metrics::counter!(m::DELETE_FAILURES, "reason" => "evict").increment(r.tally.failed());
        }
        Err(_) => metrics::counter!(m::EVICTIONS, "outcome" => "error").increment(1),
    }
}

/// Exports one sweeper pass; `stuck` carries the leases whose last sweep
/// failed from pass to pass.
fn export_sweep(
    swept: &Result<SweepReport, EvictError>,
    stuck: &mut std::collections::HashMap<(String, String), tokio::time::Instant>,
    forget_after: Duration,
) {
    use crate::metrics as m;
    let Ok(r) = swept else {
        metrics::counter!(m::SWEEPS, "outcome" => "error").increment(1);
        return;
    };
    metrics::counter!(m::SWEEPS, "outcome" => "ok").increment(1);
    metrics::counter!(m::OBJECTS_DELETED, "reason" => "sweep").increment(r.tally.deleted);
    metrics::counter!(m::DELETE_FAILURES, "reason" => "sweep").increment(r.tally.failed());
    metrics::counter!(m::SWEEP_LEASE_FAILURES).increment(r.lease_failures.len() as u64);
    let now = tokio::time::Instant::now();
    for (lease, _) in &r.lease_failures {
        stuck.insert((lease.directory_bucket.clone(), lease.prefix.clone()), now);
    }
    for key in &r.leases_settled {
        stuck.remove(key);
    }
    // A stuck lease is tried again within the longest backoff; one not
    // seen failing for longer was revived by a warm (it is no longer
    // expired) or ended otherwise.
    stuck.retain(|_, seen| now.duration_since(*seen) <= forget_after);
    metrics::gauge!(m::SWEEP_LEASES_STUCK).set(stuck.len() as f64);
}

/// Runs [`Evictor::sweep_once`] every `every` until the task is aborted.
pub fn spawn_sweeper(evictor: Arc<Evictor>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Leases whose last sweep failed: a deferred lease is tried again
        // only after its backoff, so one pass alone does not know them all.
        let mut stuck = std::collections::HashMap::new();
        let forget_after = evictor.settings.sweep_retry_max * 2 + every;
        loop {
            tick.tick().await;
            let swept = evictor.sweep_once().await;
            export_sweep(&swept, &mut stuck, forget_after);
            match swept {
                Ok(r) if r.leases_expired > 0 => tracing::info!(
                    leases_expired = r.leases_expired,
                    leases_removed = r.leases_removed,
                    deleted = r.tally.deleted,
                    kept_live = r.tally.kept_live,
                    kept_busy = r.tally.kept_busy,
                    failed = r.tally.failed(),
                    leases_failed = r.lease_failures.len(),
                    "sweep"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "sweep failed; retrying next interval"),
            }
        }
    })
}

/// Settings of tests about other rules than skew (which has its own):
/// no skew margin, and retries at once.
#[cfg(test)]
impl EvictSettings {
    fn quick() -> Self {
        Self {
            skew_margin: Duration::ZERO,
            retry_base_delay: Duration::from_millis(1),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::ManualClock;
    use crate::index::{Claims, Leases, Records};
    use crate::index::{Entry, Lease, SqliteIndex};
    use crate::store::FaultStore;
    use crate::store::MemoryStore;
    use crate::testing::built::Built;
    use expresscache::{DirectoryBucketName, Prefix};

    const DIR: &str = "cache--use1-az4--x-s3";

    type Ev = Built<Evictor, FaultStore<MemoryStore>, SqliteIndex>;

    async fn setup(keys: &[&str]) -> (Ev, Arc<ManualClock>) {
        setup_gated(keys, None).await
    }

    /// Holds the deletes that follow a HEAD until the test lets them go:
    /// the test acts between an eviction's HEAD and its second delete.
    #[derive(Debug)]
    pub(super) struct AfterHead {
        headed: std::sync::atomic::AtomicBool,
        held: std::sync::atomic::AtomicBool,
        go: tokio::sync::watch::Sender<bool>,
    }

    impl AfterHead {
        pub(super) fn new() -> Arc<Self> {
            Arc::new(Self {
                headed: Default::default(),
                held: Default::default(),
                go: tokio::sync::watch::channel(false).0,
            })
        }

        /// Waits until a delete after a HEAD is held.
        pub(super) async fn until_held(&self) {
            let t0 = std::time::Instant::now();
            while !self.held.load(std::sync::atomic::Ordering::SeqCst) {
                assert!(t0.elapsed() < Duration::from_secs(10), "no delete after a HEAD");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }

        pub(super) fn release(&self) {
            self.go.send_replace(true);
        }
    }

    impl crate::gate::Gate for AfterHead {
        fn enter(
            &self,
            call: &'static str,
            _subject: &str,
        ) -> futures::future::BoxFuture<'static, crate::gate::Pass> {
            use std::sync::atomic::Ordering;
            if call == "head" {
                self.headed.store(true, Ordering::SeqCst);
            }
            if call == "delete" && self.headed.load(Ordering::SeqCst) {
                self.held.store(true, Ordering::SeqCst);
                let mut go = self.go.subscribe();
                return Box::pin(async move {
                    go.wait_for(|go| *go).await.ok();
                    Box::new(()) as crate::gate::Pass
                });
            }
            Box::pin(async { Box::new(()) as crate::gate::Pass })
        }
    }

    async fn setup_gated(
        keys: &[&str],
        gate: Option<Arc<dyn crate::gate::Gate>>,
    ) -> (Ev, Arc<ManualClock>) {
        let store = MemoryStore::default();
        let index = SqliteIndex::open_in_memory().unwrap();
        store.create_bucket(DIR);
        for k in keys {
            let etag = store.put(DIR, k, 10);
            index
                .claim_copy(
                    DIR,
                    k,
                    &ClaimTerms {
                        owner: "test",
                        deadline: i64::MAX,
                        now: 0,
                    },
                )
                .await
                .unwrap();
            index
                .complete_copy(
                    &Entry {
                        directory_bucket: DIR.into(),
                        key: (*k).into(),
                        source_bucket: "src".into(),
                        source_key: (*k).into(),
                        source_etag: "\"s\"".into(),
                        size: 10,
                        source_last_modified: None,
                        dest_etag: etag,
                        cached_at: 0,
                    },
                    "test",
                )
                .await
                .unwrap();
        }
        let clock = Arc::new(ManualClock::new(1_000));
        let store = match gate {
            Some(gate) => FaultStore::new(store).with_gate(gate),
            None => FaultStore::new(store),
        };
        let ev = Built::new(store, index, |store, index| {
            Evictor::new(
                store,
                index,
                clock.clone(),
                EvictSettings::quick(),
            )
        });
        (ev, clock)
    }

    async fn lease(ev: &Ev, prefix: &str, expires_at: Millis) {
        ev.index
            .extend_lease(&Lease::new(DIR, prefix, "src", expires_at), 0)
            .await
            .unwrap();
    }

    async fn evict(ev: &Ev, spec: &EvictSpec) -> EvictReport {
        ev.evict(spec).await.unwrap()
    }

    fn spec(prefix: &str, force: bool) -> EvictSpec {
        EvictSpec {
            directory_bucket: DirectoryBucketName::parse(DIR).unwrap(),
            prefixes: vec![Prefix::parse(prefix).unwrap()],
            force,
        }
    }

    #[tokio::test]
    async fn evict_removes_objects_and_records_under_prefix_only() {
        let (ev, _) = setup(&["a/1", "a/2", "b/1"]).await;
        lease(&ev, "a/", 5_000).await;
        let resp = evict(&ev, &spec("a/", false)).await;
        assert_eq!(
            (resp.tally.deleted, resp.tally.bytes, resp.leases_ended),
            (2, 20, 1)
        );
        assert_eq!(ev.store.inner().keys(DIR), ["b/1"]);
        assert_eq!(ev.index.usage(DIR, "").await.unwrap().objects, 1);
    }

    #[tokio::test]
    async fn a_prefix_that_cannot_be_confirmed_is_reported_so_and_the_others_done() {
        let (ev, clock) = setup(&["a/1", "a/2", "b/1", "b/x/2"]).await;
        // Every attempt of the first DeleteObjects (a/'s) goes unanswered.
        ev.store.fail(
            crate::store::Op::Delete,
            None,
            StoreError::Transport("no answer (injected)".into()),
            Some(u64::from(ev.settings.delete_attempts)),
        );
        let both = EvictSpec {
            prefixes: vec![
                Prefix::parse("a/").unwrap(),
                Prefix::parse("b/").unwrap(),
                Prefix::parse("b/x/").unwrap(),
            ],
            ..spec("a/", false)
        };
        let r = evict(&ev, &both).await;
        let states: Vec<(&str, u64, bool)> = r
            .prefixes
            .iter()
            .map(|p| (p.prefix.as_str(), p.deleted, p.unconfirmed.is_some()))
            .collect();
        assert_eq!(
            states,
            // A prefix under another shares its outcome.
            [("a/", 0, true), ("b/", 2, false), ("b/x/", 2, false)],
            "{r:?}"
        );
        // Nothing reported false: a/'s objects and entries are still there
        // (untrusted), and evicting it again finishes it.
        assert_eq!(ev.store.inner().size(DIR, "a/1"), Some(10));
        // Once the failed delete can no longer land (its claims lapse).
        clock.advance(span_millis(ev.settings.request_timeout) + 1);
        let again = evict(&ev, &spec("a/", false)).await;
        assert_eq!(again.tally.deleted, 2, "{again:?}");
        assert!(again.prefixes[0].unconfirmed.is_none());
    }

    #[tokio::test]
    async fn a_refused_delete_fails_the_evict_rather_than_leaving_it_unconfirmed() {
        let (ev, _) = setup(&["a/1"]).await;
        ev.store.fail(
            crate::store::Op::Delete,
            None,
            StoreError::AccessDenied("no".into()),
            Some(1),
        );
        let refused = ev.evict(&spec("a/", false)).await;
        assert!(
            matches!(refused, Err(EvictError::Store { .. })),
            "waiting will not change a refusal: {refused:?}"
        );
    }

    #[tokio::test]
    async fn evict_of_a_child_keeps_what_a_live_parent_covers_unless_forced() {
        let (ev, _) = setup(&["p/c/1", "p/c/2"]).await;
        lease(&ev, "p/", 5_000).await;
        lease(&ev, "p/c/", 5_000).await;
        let resp = evict(&ev, &spec("p/c/", false)).await;
        assert_eq!((resp.tally.deleted, resp.objects_kept()), (0, 2));
        assert_eq!(Vec::from_iter(&resp.tally.kept_under), ["p/"]);
        assert!(!resp.forced);
        assert_eq!(ev.store.inner().keys(DIR).len(), 2);
        let forced = evict(&ev, &spec("p/c/", true)).await;
        assert_eq!((forced.tally.deleted, forced.objects_kept()), (2, 0));
        assert!(forced.forced);
        assert!(ev.store.inner().keys(DIR).is_empty());
    }

    #[tokio::test]
    async fn sweeper_deletes_only_what_no_live_lease_covers() {
        let (ev, clock) = setup(&["x/1", "x/long/1", "y/1"]).await;
        lease(&ev, "x/", 2_000).await;
        lease(&ev, "x/long/", 10_000).await;
        lease(&ev, "y/", 10_000).await;
        let r = ev.sweep_once().await.unwrap();
        assert_eq!(r.leases_expired, 0, "nothing expired yet");
        clock.advance(1_500); // now 2_500: x/ expired
        let r = ev.sweep_once().await.unwrap();
        assert_eq!(
            (
                r.leases_expired,
                r.leases_removed,
                r.tally.deleted,
                r.tally.kept_live
            ),
            (1, 1, 1, 1)
        );
        assert_eq!(ev.store.inner().keys(DIR), ["x/long/1", "y/1"]);
        clock.advance(10_000);
        let r = ev.sweep_once().await.unwrap();
        assert_eq!((r.leases_removed, r.tally.deleted), (2, 2));
        assert!(ev.store.inner().keys(DIR).is_empty());
        assert_eq!(ev.index.usage(DIR, "").await.unwrap().objects, 0);
    }

    /// A copy landed after the one the entry records (a retried request's
    /// first try, a superseded attempt's; a directory bucket gives it a new
    /// ETag even for the same bytes): under the eviction claim nothing can
    /// record it, so it is deleted with the rest, not left to outlive
    /// every lease and fail every sweep.
    #[tokio::test]
    async fn a_version_no_entry_records_is_deleted_under_the_eviction_claim() {
        let (ev, _) = setup(&["f/1", "f/2"]).await;
        ev.store.inner().put(DIR, "f/1", 10);
        let resp = evict(&ev, &spec("f/", false)).await;
        assert_eq!(resp.tally.failures, vec![], "{resp:?}");
        assert_eq!(resp.tally.deleted, 2);
        assert!(ev.store.inner().keys(DIR).is_empty());
        assert_eq!(ev.index.usage(DIR, "").await.unwrap().objects, 0);
    }

    /// The version a HEAD found was replaced again before its delete: that
    /// one is left alone and reported, its entry kept, its claim released.
    #[tokio::test]
    async fn a_version_written_after_the_head_is_kept_and_reported() {
        let gate = AfterHead::new();
        let (ev, _) = setup_gated(&["f/1"], Some(gate.clone())).await;
        ev.store.inner().put(DIR, "f/1", 10);
        let spec = spec("f/", false);
        let (resp, ()) = tokio::join!(evict(&ev, &spec), async {
            gate.until_held().await;
            ev.store.inner().put(DIR, "f/1", 10);
            gate.release();
        });
        assert_eq!(resp.tally.deleted, 0);
        assert_eq!(resp.tally.failures[0].code, "PreconditionFailed");
        assert_eq!(ev.store.inner().keys(DIR), ["f/1"]);
        let rec = ev
            .index
            .records(DIR, &KeyRange::prefix("f/"), 10)
            .await
            .unwrap();
        assert!(
            rec[0].entry.is_some() && rec[0].claim.is_none(),
            "claim released, entry kept"
        );
    }
}

#[cfg(test)]
mod fault_tests {
    //! Deletion under faults: lost replies, vanished buckets, clock skew,
    //! mass failures.
    use super::*;
    use crate::core::clock::ManualClock;
    use crate::index::SqliteIndex;
    use crate::index::{Claims, Leases, Records};
    use crate::plan::{CopyReason, Decision, Planner};
    use crate::store::{FaultStore, MemoryStore, ObjectMeta, Op};
    use crate::testing::built::Built;
    use expresscache::{DirectoryBucketName, Prefix};

    const DIR: &str = "cache--use1-az4--x-s3";
    type Ev = Built<Evictor, FaultStore<MemoryStore>, SqliteIndex>;

    async fn cache(ev: &Ev, dir: &str, keys: &[String]) {
        for k in keys {
            let etag = ev.store.inner().put(dir, k, 10);
            ev.index
                .claim_copy(
                    dir,
                    k,
                    &ClaimTerms {
                        owner: "w",
                        deadline: i64::MAX,
                        now: 0,
                    },
                )
                .await
                .unwrap();
            ev.index
                .complete_copy(
                    &Entry {
                        directory_bucket: dir.into(),
                        key: k.clone(),
                        source_bucket: "src".into(),
                        source_key: k.clone(),
                        source_etag: "\"s\"".into(),
                        size: 10,
                        source_last_modified: None,
                        dest_etag: etag,
                        cached_at: 0,
                    },
                    "w",
                )
                .await
                .unwrap();
        }
    }

    fn evictor(skew: Duration) -> (Ev, Arc<ManualClock>) {
        evictor_gated(skew, None)
    }

    fn evictor_gated(
        skew: Duration,
        gate: Option<Arc<dyn crate::gate::Gate>>,
    ) -> (Ev, Arc<ManualClock>) {
        let store = MemoryStore::default();
        store.create_bucket(DIR);
        let clock = Arc::new(ManualClock::new(1_000_000));
        let index = SqliteIndex::open_in_memory().unwrap();
        let store = match gate {
            Some(gate) => FaultStore::new(store).with_gate(gate),
            None => FaultStore::new(store),
        };
        let ev = Built::new(store, index, |store, index| {
            Evictor::new(
                store,
                index,
                clock.clone(),
                EvictSettings {
                    skew_margin: skew,
                    retry_base_delay: Duration::from_millis(1),
                    // Abandoned claims lapse at once in these tests.
                    request_timeout: Duration::ZERO,
                    ..EvictSettings::default()
                },
            )
        });
        (ev, clock)
    }

    fn keys(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i:04}")).collect()
    }

    fn spec(prefix: &str) -> EvictSpec {
        EvictSpec {
            directory_bucket: DirectoryBucketName::parse(DIR).unwrap(),
            prefixes: vec![Prefix::parse(prefix).unwrap()],
            force: false,
        }
    }

    /// What a warm would decide for `key` now.
    async fn warm_decides(ev: &Ev, key: &str) -> Decision {
        planner_decides(ev.index.as_ref(), key, ev.clock.now()).await
    }

    /// What a warm's planner decides for `key` at `now`, by `index`.
    async fn planner_decides(index: &impl Records, key: &str, now: Millis) -> Decision {
        let rec = index
            .records(DIR, &KeyRange::prefix(key).upto(Some(key)), 1)
            .await
            .unwrap();
        let obj = ObjectMeta {
            key: key.into(),
            etag: "\"s\"".into(),
            size: 10,
            last_modified: None,
        };
        Planner {
            source_bucket: "src",
            owner: "warm",
            force: false,
            now,
        }
        .decide(&obj, rec.first())
    }

    /// Holds every HEAD until the test lets it go (the test moves clocks
    /// while an eviction waits for a late copy's version), or holds every
    /// call named `call` for good (the process dies there).
    #[derive(Debug)]
    struct Hold {
        call: &'static str,
        held: std::sync::atomic::AtomicBool,
        go: tokio::sync::watch::Sender<bool>,
    }

    impl Hold {
        fn new(call: &'static str) -> Arc<Self> {
            Arc::new(Self {
                call,
                held: Default::default(),
                go: tokio::sync::watch::channel(false).0,
            })
        }

        async fn until_held(&self) {
            let t0 = std::time::Instant::now();
            while !self.held.load(std::sync::atomic::Ordering::SeqCst) {
                assert!(t0.elapsed() < Duration::from_secs(10), "no {} held", self.call);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }

        fn release(&self) {
            self.go.send_replace(true);
        }
    }

    impl crate::gate::Gate for Hold {
        fn enter(
            &self,
            call: &'static str,
            _subject: &str,
        ) -> futures::future::BoxFuture<'static, crate::gate::Pass> {
            if call != self.call {
                return Box::pin(async { Box::new(()) as crate::gate::Pass });
            }
            self.held.store(true, std::sync::atomic::Ordering::SeqCst);
            let mut go = self.go.subscribe();
            Box::pin(async move {
                go.wait_for(|go| *go).await.ok();
                Box::new(()) as crate::gate::Pass
            })
        }
    }

    /// An evictor whose HEADs `hold` holds, with claims of `claim_ttl`
    /// and deletes of one attempt of at most `request_timeout`.
    fn evictor_holding_heads(
        hold: Arc<Hold>,
        claim_ttl: Duration,
        request_timeout: Duration,
    ) -> (Ev, Arc<ManualClock>) {
        let store = MemoryStore::default();
        store.create_bucket(DIR);
        let clock = Arc::new(ManualClock::new(1_000_000));
        let index = SqliteIndex::open_in_memory().unwrap();
        let ev = Built::new(FaultStore::new(store).with_gate(hold), index, |store, index| {
            Evictor::new(
                store,
                index,
                clock.clone(),
                EvictSettings {
                    delete_attempts: 1,
                    claim_ttl,
                    request_timeout,
                    ..EvictSettings::quick()
                },
            )
        });
        (ev, clock)
    }

    /// One cached key under `prefix` with a late copy over it, and an
    /// evictor (claims of `claim_ttl`, deletes of one attempt of at most
    /// `request_timeout`) whose HEADs are held: the first, fenced delete
    /// will miss the late copy and the HEAD that reads it will wait.
    async fn late_copy_behind_a_held_head(
        prefix: &str,
        claim_ttl: Duration,
        request_timeout: Duration,
    ) -> (Ev, Arc<ManualClock>, Arc<Hold>, Vec<String>, EvictSpec) {
        let hold = Hold::new("head");
        let (ev, clock) = evictor_holding_heads(hold.clone(), claim_ttl, request_timeout);
        let ks = keys(prefix, 1);
        cache(&ev, DIR, &ks).await;
        ev.store.inner().put(DIR, &ks[0], 10);
        (ev, clock, hold, ks, spec(prefix))
    }

    /// The HEAD that reads a late copy's version hangs past the eviction
    /// claims (by this clock): the version is not deleted blind (a warm may
    /// have taken the key over and recorded a copy), the key is kept and
    /// reported, its entry kept; the next eviction deletes it.
    #[tokio::test]
    async fn a_late_copy_whose_head_hangs_past_the_claims_is_kept_then_deleted_by_the_next_eviction(
    ) {
        let (ev, clock, hold, ks, spec) =
            late_copy_behind_a_held_head("k/", Duration::from_secs(60), Duration::from_millis(10))
                .await;
        let (r, ()) = tokio::join!(ev.evict(&spec), async {
            hold.until_held().await;
            clock.advance(61_000);
            hold.release();
        });
        let r = r.unwrap();
        assert_eq!(r.tally.deleted, 0, "{r:?}");
        assert_eq!(r.tally.failures[0].key, ks[0], "{r:?}");
        assert_eq!(ev.store.inner().keys(DIR), ks, "kept");
        let rec = ev.index.records(DIR, &KeyRange::prefix("k/"), 10).await.unwrap();
        assert!(rec[0].entry.is_some(), "its entry kept");
        let r = ev.evict(&spec).await.unwrap();
        assert_eq!((r.tally.deleted, r.tally.failed()), (1, 0), "{r:?}");
        assert!(ev.store.inner().keys(DIR).is_empty());
    }

    /// The wall clock is set back an hour while the HEAD of a late copy's
    /// version is under way, and the claims' span passes on the monotonic
    /// clock: by the wall clock they would seem to last another hour, but
    /// other replicas judge them by the deadline written, so the version
    /// is not deleted; the key is kept and reported.
    #[tokio::test]
    async fn a_wall_clock_set_back_during_an_eviction_does_not_extend_its_claims() {
        let (ev, clock, hold, ks, spec) =
            late_copy_behind_a_held_head("b/", Duration::from_millis(300), Duration::from_millis(5))
                .await;
        let (r, ()) = tokio::join!(ev.evict(&spec), async {
            hold.until_held().await;
            clock.advance(-3_600_000);
            tokio::time::sleep(Duration::from_millis(400)).await;
            hold.release();
        });
        let r = r.unwrap();
        assert_eq!(r.tally.deleted, 0, "not deleted past the claims: {r:?}");
        assert_eq!(r.tally.failures[0].key, ks[0], "{r:?}");
        assert_eq!(ev.store.inner().keys(DIR), ks, "kept");
    }

    /// The process dies right after the delete of a late copy's version
    /// landed, before recording it: the entry still names an object that
    /// is gone. While the eviction claim is live a warm's planner waits
    /// for it; once it lapsed, the entry counts as unconfirmed and the
    /// planner copies the key again, never a hit on a gone object.
    #[tokio::test]
    async fn an_evictor_that_dies_after_its_second_delete_leaves_an_entry_a_warm_copies_again() {
        let hold = Hold::new("finish_evict");
        let store = MemoryStore::default();
        store.create_bucket(DIR);
        let clock = Arc::new(ManualClock::new(1_000_000));
        let index = crate::index::CountingIndex::new(SqliteIndex::open_in_memory().unwrap())
            .with_gate(hold.clone());
        let ev = Built::new(FaultStore::new(store), index, |store, index| {
            Evictor::new(
                store,
                index,
                clock.clone(),
                EvictSettings::quick(),
            )
        });
        let key = "z/0".to_owned();
        let etag = ev.store.inner().put(DIR, &key, 10);
        let terms = ClaimTerms {
            owner: "w",
            deadline: i64::MAX,
            now: 0,
        };
        ev.index.claim_copy(DIR, &key, &terms).await.unwrap();
        let entry = Entry {
            directory_bucket: DIR.into(),
            key: key.clone(),
            source_bucket: "src".into(),
            source_key: key.clone(),
            source_etag: "\"s\"".into(),
            size: 10,
            source_last_modified: None,
            dest_etag: etag,
            cached_at: 0,
        };
        ev.index.complete_copy(&entry, "w").await.unwrap();
        // A late copy: the first, fenced delete misses it; the HEAD finds it.
        ev.store.inner().put(DIR, &key, 10);
        let spec = spec("z/");
        tokio::select! {
            r = ev.evict(&spec) => panic!("the eviction was to die before recording: {r:?}"),
            () = hold.until_held() => {}
        }
        assert!(ev.store.inner().keys(DIR).is_empty(), "the second delete landed");
        assert!(
            matches!(
                planner_decides(ev.index.as_ref(), &key, clock.now()).await,
                Decision::Wait(_)
            ),
            "a warm waits while the claim is live"
        );
        let lapsed = clock.now() + span_millis(EvictSettings::default().claim_ttl) + 1;
        assert_eq!(
            planner_decides(ev.index.as_ref(), &key, lapsed).await,
            Decision::Copy(CopyReason::Unconfirmed),
            "once it lapsed, copied again: never a hit on a gone object"
        );
    }

    /// The HEAD that reads a late copy's version is throttled: that key is
    /// kept and reported, its entry kept; the next eviction deletes it.
    #[tokio::test]
    async fn a_late_copy_whose_head_is_throttled_is_kept_then_deleted_by_the_next_eviction() {
        let (ev, _) = evictor(Duration::ZERO);
        let ks = keys("h/", 3);
        cache(&ev, DIR, &ks).await;
        ev.store.inner().put(DIR, &ks[1], 10);
        ev.store.fail(Op::Head, None, StoreError::Throttled("SlowDown".into()), Some(1));
        let r = ev.evict(&spec("h/")).await.unwrap();
        assert_eq!(r.tally.deleted, 2, "{r:?}");
        assert_eq!(r.tally.failures[0].key, ks[1]);
        assert_eq!(ev.store.inner().keys(DIR), [ks[1].clone()]);
        let r = ev.evict(&spec("h/")).await.unwrap();
        assert_eq!((r.tally.deleted, r.tally.failed()), (1, 0), "{r:?}");
        assert!(ev.store.inner().keys(DIR).is_empty());
    }

    /// The delete of a late copy's version loses every reply after S3
    /// applied it: the key may be empty now, so its entry is unconfirmed
    /// (a warm copies it again), and the failure is reported.
    #[tokio::test]
    async fn a_late_copys_delete_with_its_replies_lost_leaves_the_entry_unconfirmed() {
        let gate = super::tests::AfterHead::new();
        let (ev, _) = evictor_gated(Duration::ZERO, Some(gate.clone()));
        let ks = keys("u/", 1);
        cache(&ev, DIR, &ks).await;
        ev.store.inner().put(DIR, &ks[0], 10);
        let spec = spec("u/");
        let (r, ()) = tokio::join!(ev.evict(&spec), async {
            gate.until_held().await;
            ev.store.lose_replies(Op::Delete, 100);
            gate.release();
        });
        let r = r.unwrap();
        assert_eq!(r.tally.deleted, 0, "{r:?}");
        assert!(r.tally.failures[0].message.contains("reply lost"), "{r:?}");
        assert!(ev.store.inner().keys(DIR).is_empty(), "S3 applied it");
        assert_eq!(
            warm_decides(&ev, &ks[0]).await,
            Decision::Copy(CopyReason::Unconfirmed),
            "a warm must copy it again, not count a hit"
        );
        let rec = ev
            .index
            .records(DIR, &KeyRange::prefix("u/"), 10)
            .await
            .unwrap();
        assert!(
            rec[0].claim.is_some(),
            "the claim is left to lapse (a delete in flight may still land), not released"
        );
    }

    #[tokio::test]
    async fn a_lost_delete_reply_never_leaves_an_entry_that_claims_a_gone_object() {
        let (ev, _) = evictor(Duration::ZERO);
        let ks = keys("g/", 5);
        cache(&ev, DIR, &ks).await;
        // Every attempt deletes and loses its reply: the outcome stays
        // unknown to the evictor.
        ev.store.lose_replies(Op::Delete, 100);
        let r = ev.evict(&spec("g/")).await.unwrap();
        let err = r.prefixes[0].unconfirmed.clone().unwrap_or_default();
        assert!(err.contains("reply lost"), "reported unconfirmed: {r:?}");
        assert!(
            ev.store.inner().keys(DIR).is_empty(),
            "S3 applied the delete"
        );
        for k in &ks {
            assert_eq!(
                warm_decides(&ev, k).await,
                Decision::Copy(CopyReason::Unconfirmed),
                "{k}: a warm must copy it again, not count a hit"
            );
        }
    }

    #[tokio::test]
    async fn a_retried_delete_whose_first_reply_was_lost_finishes_the_eviction() {
        let (ev, _) = evictor(Duration::ZERO);
        let ks = keys("r/", 5);
        cache(&ev, DIR, &ks).await;
        ev.store.lose_replies(Op::Delete, 1);
        let report = ev.evict(&spec("r/")).await.unwrap();
        // The retry's fenced deletes answer NoSuchKey: gone, as wanted.
        assert_eq!((report.tally.deleted, report.tally.failed()), (5, 0));
        assert_eq!(ev.index.usage(DIR, "r/").await.unwrap().objects, 0);
    }

    #[tokio::test]
    async fn one_lease_that_cannot_be_swept_does_not_stop_the_others() {
        let (ev, clock) = evictor(Duration::ZERO);
        let gone = "gone--use1-az4--x-s3";
        // The oldest expired lease points at a bucket that no longer
        // exists; its entries remain in the index.
        cache(&ev, gone, &keys("a/", 3)).await;
        ev.store.fail(
            Op::Delete,
            Some("a/0000"),
            StoreError::NoSuchBucket(gone.into()),
            None,
        );
        ev.index
            .extend_lease(&Lease::new(gone, "a/", "src", 1_000_001), 0)
            .await
            .unwrap();
        cache(&ev, DIR, &keys("b/", 20)).await;
        ev.index
            .extend_lease(&Lease::new(DIR, "b/", "src", 1_000_002), 0)
            .await
            .unwrap();
        clock.advance(10);
        let r = ev.sweep_once().await.unwrap();
        assert_eq!(r.lease_failures.len(), 1, "{r:?}");
        assert_eq!(r.lease_failures[0].0.directory_bucket, gone);
        assert_eq!((r.leases_removed, r.tally.deleted), (1, 20), "b/ swept");
        assert!(ev.store.inner().keys(DIR).is_empty());
        let stuck = ev.index.sweep_failures(gone, "", 10).await.unwrap();
        assert_eq!(stuck.len(), 1, "reported for status");
        assert!(stuck[0].error.contains("does not exist"), "{:?}", stuck[0]);
        // Backed off: the next pass does not retry it at once ...
        assert_eq!(ev.sweep_once().await.unwrap().leases_expired, 0);
        // ... but after the backoff it does, with a longer one next.
        clock.advance(31_000);
        let r = ev.sweep_once().await.unwrap();
        assert_eq!(r.lease_failures.len(), 1);
        let stuck = ev.index.sweep_failures(gone, "", 10).await.unwrap();
        assert_eq!(stuck[0].attempts, 2);
        assert!(stuck[0].retry_at >= clock.now() + 60_000);
    }

    #[tokio::test]
    async fn keys_refused_one_by_one_defer_the_lease_like_a_failed_request() {
        let (ev, clock) = evictor(Duration::ZERO);
        let ks = keys("k/", 3);
        cache(&ev, DIR, &ks).await;
        // Replaced behind the index's back, and what replaced them cannot
        // be read: every fenced delete is refused, and stays so.
        for k in &ks {
            ev.store.inner().put(DIR, k, 10);
        }
        ev.store.fail(Op::Head, None, StoreError::AccessDenied("head".into()), None);
        ev.index
            .extend_lease(&Lease::new(DIR, "k/", "src", clock.now() + 1), 0)
            .await
            .unwrap();
        clock.advance(10);
        let r = ev.sweep_once().await.unwrap();
        assert_eq!(r.lease_failures.len(), 1, "{r:?}");
        assert!(r.lease_failures[0]
            .1
            .contains("3 objects could not be deleted"));
        assert_eq!(
            ev.index.sweep_failures(DIR, "k/", 10).await.unwrap().len(),
            1
        );
        assert_eq!(
            ev.sweep_once().await.unwrap().leases_expired,
            0,
            "backed off, so it cannot crowd out other leases"
        );
    }

    #[tokio::test]
    async fn a_first_copy_in_flight_keeps_its_expired_lease_until_recorded() {
        let (ev, clock) = evictor(Duration::ZERO);
        // A warm claimed a key it has never copied before and is copying it.
        ev.index
            .claim_copy(
                DIR,
                "f/new",
                &ClaimTerms {
                    owner: "warm",
                    deadline: clock.now() + 600_000,
                    now: 0,
                },
            )
            .await
            .unwrap();
        ev.index
            .extend_lease(&Lease::new(DIR, "f/", "src", clock.now() + 1), 0)
            .await
            .unwrap();
        clock.advance(10);
        let r = ev.sweep_once().await.unwrap();
        assert_eq!((r.tally.kept_busy, r.leases_removed), (1, 0));
        assert_eq!(
            ev.index
                .expired_leases(clock.now(), 10)
                .await
                .unwrap()
                .len(),
            1,
            "the lease stays, so the entry the copy records will be swept"
        );
    }

    #[test]
    fn an_eviction_claim_outlasts_every_delete_attempt() {
        let t =
            EvictSettings::claim_ttl_for(4, Duration::from_millis(200), Duration::from_secs(60));
        // 4 x 60 s + 0.2 + 0.4 + 0.8 s of backoff, doubled.
        assert_eq!(t, Duration::from_millis(2 * (240_000 + 1_400)));
        assert_eq!(
            EvictSettings::claim_ttl_for(1, Duration::ZERO, Duration::from_secs(1)),
            Duration::from_secs(120),
            "never under 2 minutes"
        );
    }

    #[tokio::test]
    async fn a_clock_step_within_the_skew_margin_deletes_nothing_live() {
        let (ev, clock) = evictor(Duration::from_secs(5));
        cache(&ev, DIR, &keys("s/", 3)).await;
        let expires = clock.now() + 60_000;
        ev.index
            .extend_lease(&Lease::new(DIR, "s/", "src", expires), 0)
            .await
            .unwrap();
        // Our clock steps 4 s past the lease's end (another replica's clock,
        // or the true time, may still be before it).
        clock.advance(64_000);
        let r = ev.sweep_once().await.unwrap();
        assert_eq!((r.leases_expired, r.tally.deleted), (0, 0));
        assert_eq!(ev.store.inner().keys(DIR).len(), 3);
        clock.advance(1_001);
        let r = ev.sweep_once().await.unwrap();
        assert_eq!(r.tally.deleted, 3, "past the margin it is swept");
    }

    #[tokio::test]
    async fn a_mass_delete_failure_reports_the_first_hundred_and_counts_the_rest() {
        let (ev, _) = evictor(Duration::ZERO);
        let ks = keys("m/", 250);
        cache(&ev, DIR, &ks).await;
        // Every object was replaced behind the index's back, and what
        // replaced them cannot be read: each fenced delete fails.
        for k in &ks {
            ev.store.inner().put(DIR, k, 10);
        }
        ev.store.fail(Op::Head, None, StoreError::AccessDenied("head".into()), None);
        let resp = ev.evict(&spec("m/")).await.unwrap();
        assert_eq!(resp.tally.failures.len(), 100);
        assert_eq!(resp.tally.failures_omitted, 150);
        assert_eq!(resp.tally.deleted, 0);
    }
}
