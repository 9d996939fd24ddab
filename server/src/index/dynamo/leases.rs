//! Leases: one item per (directory bucket, prefix, source bucket) in the
//! leases table (doc/INDEX-DYNAMODB.md §2 "Leases"). Every change is one
//! conditional UpdateItem/DeleteItem on the lease's own item, so a warm's
//! renewal and the sweeper's epoch rotation cannot both win.

use std::collections::BTreeSet;

use aws_sdk_dynamodb::types::ReturnValue;

use super::layout::{
    lease_key, lease_of, lease_prefix_operand, new_epoch, sweep_failure_of, Item, Vals, BY_EXPIRY,
    EPOCH, EXPIRES_AT, LEASE_KIND, SWEEP_ATTEMPTS, SWEEP_ERROR, SWEEP_RETRY_AT,
};
use super::{Cond, DynamoIndex, QuerySpec, LEASE_WRITES_AT_ONCE, ROUNDS};
use crate::index::Leases;
use crate::index::{
    ancestors, prefix_successor, IndexError, Lease, Millis, SweepBackoff, SweepFailure,
};

/// The answer to a renewal that named an epoch and was refused: the lease
/// as stored, its epoch cleared if it is over at `now`, or an empty epoch
/// if there is none.
fn refused_renewal(asked: &Lease, seen: Option<Item>, now: Millis) -> Result<Lease, IndexError> {
    Ok(match seen {
        None => Lease {
            epoch: String::new(),
            expires_at: 0,
            ..asked.clone()
        },
        Some(item) => {
            let mut l = lease_of(&item)?;
            if l.expires_at <= now {
                l.epoch.clear();
            }
            l
        }
    })
}

fn done_lease(item: Option<Item>) -> Result<Lease, IndexError> {
    lease_of(&item.ok_or_else(|| IndexError::Corrupt("UpdateItem returned no lease".into()))?)
}

fn int(item: &Item, attr: &str) -> Option<i64> {
    item.get(attr)
        .and_then(|v| v.as_n().ok())
        .and_then(|n| n.parse().ok())
}

fn text<'a>(item: &'a Item, attr: &str) -> Option<&'a str> {
    item.get(attr)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

impl DynamoIndex {
    /// [`extend`](Self::extend) of a lease the caller holds (its epoch
    /// set): only the very lease the warm wrote, only while live.
    async fn renew_lease(
        &self,
        key: Item,
        lease: &Lease,
        now: Millis,
    ) -> Result<Lease, IndexError> {
        let res = self
            .update(
                self.tables.leases.as_str(),
                key,
                "SET #expires_at = :e",
                Some("#epoch = :epoch AND #expires_at > :now AND #expires_at < :e"),
                Vals::new()
                    .n("e", lease.expires_at)
                    .s("epoch", &lease.epoch)
                    .n("now", now),
                ReturnValue::AllNew,
            )
            .await?;
        match res {
            Cond::Done(item) => done_lease(item),
            Cond::Refused(seen) => refused_renewal(lease, seen, now),
        }
    }

    /// Every lease item of exactly `prefix` in `dir`, strongly consistent,
    /// in source bucket order.
    pub(super) async fn leases_of_prefix(
        &self,
        dir: &str,
        prefix: &str,
    ) -> Result<Vec<Item>, IndexError> {
        let Some(operand) = lease_prefix_operand(prefix) else {
            return Ok(Vec::new());
        };
        let q = QuerySpec {
            table: &self.tables.leases,
            index: None,
            key_condition: "#directory_bucket = :dir AND begins_with(#lease, :p)".into(),
            filter: None,
            projection: None,
            vals: Vals::new().s("dir", dir).s("p", operand),
            consistent: true,
            limit: None,
            descending: false,
        };
        self.query_all(&q, usize::MAX).await
    }

    /// The prefixes among `prefixes` that hold a lease live at `now`, read
    /// with one strongly consistent Query per prefix, concurrently.
    pub(super) async fn live_prefixes(
        &self,
        dir: &str,
        prefixes: &BTreeSet<String>,
        now: Millis,
    ) -> Result<BTreeSet<String>, IndexError> {
        let found = self
            .each(prefixes, |p| async move {
                let items = self.leases_of_prefix(dir, p).await?;
                let mut live = false;
                for item in &items {
                    live |= lease_of(item)?.is_live(now);
                }
                Ok(live.then(|| p.clone()))
            })
            .await?;
        Ok(found.into_iter().flatten().collect())
    }

    /// The key condition of the lease items whose prefix lies in [`lo`,
    /// successor(`prefix`)), with its values.
    fn lease_range(dir: &str, lo: &str, prefix: &str) -> (String, Vals) {
        let vals = Vals::new().s("dir", dir);
        match (lo.is_empty(), prefix_successor(prefix)) {
            (true, None) => ("#directory_bucket = :dir".into(), vals),
            (false, None) => (
                "#directory_bucket = :dir AND #lease >= :lo".into(),
                vals.s("lo", lo),
            ),
            // No sort key equals a successor exactly (every one holds the
            // separator), so BETWEEN's inclusive end excludes it anyway.
            (true, Some(hi)) => (
                "#directory_bucket = :dir AND #lease < :hi".into(),
                vals.s("hi", hi),
            ),
            (false, Some(hi)) => (
                "#directory_bucket = :dir AND #lease BETWEEN :lo AND :hi".into(),
                vals.s("lo", lo).s("hi", hi),
            ),
        }
    }

    /// Revives `stored` (read as expired) as `lease` asks: a new epoch
    /// (the sweeper may have deleted under it; a warm naming the old epoch
    /// must learn its lease ended), if it is still as read. A longer
    /// expiry also starts a clean sweep record, as a created lease has.
    async fn revive(
        &self,
        key: Item,
        lease: &Lease,
        stored: &Lease,
    ) -> Result<Cond<Option<Item>>, IndexError> {
        let clean = if lease.expires_at > stored.expires_at {
            " REMOVE #sweep_attempts, #sweep_error, #sweep_retry_at"
        } else {
            ""
        };
        self.update(
            &self.tables.leases,
            key,
            &format!("SET #expires_at = :e, #epoch = :new{clean}"),
            Some("#expires_at = :old_e AND #epoch = :old_epoch"),
            Vals::new()
                .n("e", stored.expires_at.max(lease.expires_at))
                .s("new", new_epoch())
                .n("old_e", stored.expires_at)
                .s("old_epoch", &stored.epoch),
            ReturnValue::AllNew,
        )
        .await
    }

    /// Gives `lease` a new epoch with `update` (which may set more), if
    /// `condition` holds at `now`; the lease as it then stands, or `None`
    /// if the condition failed. A retry whose first attempt landed (its
    /// reply lost) finds its own epoch and counts as done.
    async fn rotate_epoch(
        &self,
        lease: &Lease,
        update: &str,
        condition: &str,
        now: Millis,
    ) -> Result<Option<Lease>, IndexError> {
        let epoch = new_epoch();
        let res = self
            .update(
                &self.tables.leases,
                lease_key(lease)?,
                update,
                Some(condition),
                Vals::new().n("now", now).s("new", &epoch),
                ReturnValue::AllNew,
            )
            .await?;
        match res {
            Cond::Done(item) => done_lease(item).map(Some),
            Cond::Refused(Some(item)) if text(&item, EPOCH) == Some(epoch.as_str()) => {
                lease_of(&item).map(Some)
            }
            Cond::Refused(_) => Ok(None),
        }
    }
}

#[async_trait::async_trait]
impl Leases for DynamoIndex {
    async fn extend_lease(&self, lease: &Lease, now: Millis) -> Result<Lease, IndexError> {
        let key = lease_key(lease)?;
        let table = self.tables.leases.as_str();
        if !lease.epoch.is_empty() {
            return self.renew_lease(key, lease, now).await;
        }
        // Create, or extend a live lease (keeping its epoch): the common
        // case; again (a bounded number of times) if the lease was
        // removed between a refusal and the write that follows it.
        'common: for _ in 0..ROUNDS {
            let res = self
                .update(
                    table,
                    key.clone(),
                    "SET #expires_at = :e, #epoch = if_not_exists(#epoch, :new), #prefix = :prefix, \
                     #source_bucket = :source, #kind = :lease \
                     REMOVE #sweep_attempts, #sweep_error, #sweep_retry_at",
                    Some(
                        "attribute_not_exists(#expires_at) OR (#expires_at > :now AND #expires_at < :e)",
                    ),
                    Vals::new()
                        .n("e", lease.expires_at)
                        .s("new", new_epoch())
                        .s("prefix", &lease.prefix)
                        .s("source", &lease.source_bucket)
                        .s("lease", LEASE_KIND)
                        .n("now", now),
                    ReturnValue::AllNew,
                )
                .await?;
            let mut seen = match res {
                Cond::Done(item) => return done_lease(item),
                Cond::Refused(seen) => seen,
            };
            for _ in 0..ROUNDS {
                let Some(item) = seen else {
                    // Removed since: try the common case again.
                    continue 'common;
                };
                let stored = lease_of(&item)?;
                if stored.expires_at > now {
                    // Live and already at least as long: nothing to write.
                    if stored.expires_at >= lease.expires_at {
                        return Ok(stored);
                    }
                    // Live but shorter (revived by another warm since the
                    // refusal, or read after it): extended the common way.
                    continue 'common;
                }
                let res = self.revive(key.clone(), lease, &stored).await?;
                seen = match res {
                    Cond::Done(item) => return done_lease(item),
                    Cond::Refused(seen) => seen,
                };
            }
            break;
        }
        Err(self.contention("extend_lease"))
    }
    /// One conditional write per lease (DynamoDB has no conditional batch
    /// write short of a transaction, which would fail all for one), in
    /// rounds of [`LEASE_WRITES_AT_ONCE`]: a few round trips of latency
    /// rather than one per prefix, without a burst of a thousand writes.
    async fn extend_leases(&self, leases: &[Lease], now: Millis) -> Result<Vec<Lease>, IndexError> {
        let mut stored = Vec::with_capacity(leases.len());
        for chunk in leases.chunks(LEASE_WRITES_AT_ONCE) {
            stored.extend(
                futures::future::try_join_all(chunk.iter().map(|l| self.extend_lease(l, now)))
                    .await?,
            );
        }
        Ok(stored)
    }
    async fn covering_leases(
        &self,
        dir: &str,
        prefix: &str,
        now: Millis,
    ) -> Result<Vec<Lease>, IndexError> {
        let per_prefix = self
            .each(ancestors(prefix), |p| async move {
                self.leases_of_prefix(dir, &p).await
            })
            .await?;
        let mut out = Vec::new();
        for item in per_prefix.iter().flatten() {
            let l = lease_of(item)?;
            if l.is_live(now) {
                out.push(l);
            }
        }
        Ok(out)
    }
    async fn leases_under(
        &self,
        dir: &str,
        prefix: &str,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<Lease>, IndexError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Strictly under: past the prefix's own leases ("p" U+0001 ...).
        let lo = format!("{prefix}\u{2}");
        let (key_condition, vals) = Self::lease_range(dir, &lo, prefix);
        let q = QuerySpec {
            table: &self.tables.leases,
            index: None,
            key_condition,
            filter: Some("#expires_at > :now"),
            projection: None,
            vals: vals.n("now", now),
            consistent: true,
            limit: Some(limit),
            descending: false,
        };
        let mut out = self
            .query_all(&q, limit)
            .await?
            .iter()
            .map(lease_of)
            .collect::<Result<Vec<_>, _>>()?;
        out.truncate(limit);
        Ok(out)
    }
    async fn end_leases(
        &self,
        dir: &str,
        prefix: &str,
        now: Millis,
    ) -> Result<Vec<Lease>, IndexError> {
        let (key_condition, vals) = Self::lease_range(dir, prefix, prefix);
        let q = QuerySpec {
            table: &self.tables.leases,
            index: None,
            key_condition,
            filter: Some("#expires_at > :now"),
            projection: None,
            vals: vals.n("now", now),
            consistent: true,
            limit: None,
            descending: false,
        };
        let live = self.query_all(&q, usize::MAX).await?;
        let ended = self
            .each(live, |item| async move {
                let l = lease_of(&item)?;
                // Ended or expired by someone else meanwhile: None.
                self.rotate_epoch(
                    &l,
                    "SET #expires_at = :now, #epoch = :new",
                    "#expires_at > :now",
                    now,
                )
                .await
            })
            .await?;
        Ok(ended.into_iter().flatten().collect())
    }
    async fn expired_leases(&self, now: Millis, limit: usize) -> Result<Vec<Lease>, IndexError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // The index is eventually consistent: it only names candidates; the
        // conditional write on the table decides.
        let q = QuerySpec {
            table: &self.tables.leases,
            index: Some(BY_EXPIRY),
            key_condition: "#kind = :lease AND #expires_at <= :now".into(),
            filter: Some("attribute_not_exists(#sweep_retry_at) OR #sweep_retry_at <= :now"),
            projection: None,
            vals: Vals::new().s("lease", LEASE_KIND).n("now", now),
            consistent: false,
            limit: Some(limit),
            descending: false,
        };
        let mut candidates = self.query_all(&q, limit).await?;
        candidates.truncate(limit);
        let taken = self
            .each(candidates, |item| async move {
                let l = lease_of(&item)?;
                // Revived, deferred or removed since the index saw it: None.
                self.rotate_epoch(
                    &l,
                    "SET #epoch = :new",
                    "#expires_at <= :now AND \
                     (attribute_not_exists(#sweep_retry_at) OR #sweep_retry_at <= :now)",
                    now,
                )
                .await
            })
            .await?;
        let mut out: Vec<Lease> = taken.into_iter().flatten().collect();
        out.sort_by_key(|l| l.expires_at);
        Ok(out)
    }
    async fn defer_sweep(
        &self,
        lease: &Lease,
        error: &str,
        b: &SweepBackoff,
    ) -> Result<SweepFailure, IndexError> {
        let key = lease_key(lease)?;
        let table = self.tables.leases.as_str();
        let as_given = || SweepFailure {
            lease: lease.clone(),
            attempts: 1,
            error: error.to_owned(),
            retry_at: b.now.saturating_add(b.base),
        };
        let mut seen = self.get(table, key.clone()).await?;
        for _ in 0..ROUNDS {
            // Revived or removed since the sweeper read it: it owes no sweep.
            let Some(item) = seen.filter(|i| int(i, EXPIRES_AT) == Some(lease.expires_at)) else {
                return Ok(as_given());
            };
            let attempts = int(&item, SWEEP_ATTEMPTS).unwrap_or(0);
            let shift = u32::try_from(attempts.clamp(0, 16)).unwrap_or(16);
            let delay = b.base.checked_shl(shift).unwrap_or(i64::MAX).min(b.max);
            let retry_at = b.now.saturating_add(delay);
            let same_attempts = if attempts == 0 {
                "attribute_not_exists(#sweep_attempts)"
            } else {
                "#sweep_attempts = :old"
            };
            let res = self
                .update(
                    table,
                    key.clone(),
                    "SET #sweep_attempts = :attempts, #sweep_error = :error, \
                     #sweep_retry_at = :retry_at",
                    Some(&format!("#expires_at = :e AND {same_attempts}")),
                    Vals::new()
                        .n("attempts", attempts + 1)
                        .s("error", error)
                        .n("retry_at", retry_at)
                        .n("e", lease.expires_at)
                        .n("old", attempts),
                    ReturnValue::AllNew,
                )
                .await?;
            seen = match res {
                Cond::Done(Some(item)) => return sweep_failure_of(&item),
                Cond::Done(None) => return Err(IndexError::Corrupt("no lease returned".into())),
                // Our own earlier attempt landed (its reply was lost).
                Cond::Refused(Some(item))
                    if int(&item, SWEEP_ATTEMPTS) == Some(attempts + 1)
                        && int(&item, SWEEP_RETRY_AT) == Some(retry_at)
                        && text(&item, SWEEP_ERROR) == Some(error) =>
                {
                    return sweep_failure_of(&item)
                }
                Cond::Refused(seen) => seen,
            };
        }
        Err(self.contention("defer_sweep"))
    }
    async fn sweep_failures(
        &self,
        dir: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<SweepFailure>, IndexError> {
        let covering: Vec<String> = ancestors(prefix)
            .into_iter()
            .filter(|p| p != prefix)
            .collect();
        let above = self
            .each(
                covering,
                |p| async move { self.leases_of_prefix(dir, &p).await },
            )
            .await?;
        let mut out = Vec::new();
        for item in above.iter().flatten() {
            if item.contains_key(SWEEP_ATTEMPTS) {
                out.push(sweep_failure_of(item)?);
            }
        }
        let (key_condition, vals) = Self::lease_range(dir, prefix, prefix);
        let q = QuerySpec {
            table: &self.tables.leases,
            index: None,
            key_condition,
            filter: Some("attribute_exists(#sweep_attempts)"),
            projection: None,
            vals,
            consistent: true,
            limit: Some(limit.max(1)),
            descending: false,
        };
        for item in self.query_all(&q, limit).await? {
            out.push(sweep_failure_of(&item)?);
        }
        out.truncate(limit);
        Ok(out)
    }
    async fn remove_lease_if_expired(
        &self,
        lease: &Lease,
        now: Millis,
    ) -> Result<bool, IndexError> {
        let res = self
            .delete(
                &self.tables.leases,
                lease_key(lease)?,
                "#expires_at <= :now",
                Vals::new().n("now", now),
            )
            .await?;
        Ok(matches!(res, Cond::Done(())))
    }
}
