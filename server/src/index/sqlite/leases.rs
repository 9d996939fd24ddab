//! Leases: extending (by epoch), ending, expiring and sweeping them.

use super::*;

pub(super) const LEASE_COLUMNS: &str = "directory_bucket, prefix, source_bucket, expires_at, epoch";

pub(super) fn row_to_lease(r: &rusqlite::Row<'_>) -> rusqlite::Result<Lease> {
    Ok(Lease {
        directory_bucket: r.get(0)?,
        prefix: r.get(1)?,
        source_bucket: r.get(2)?,
        expires_at: r.get(3)?,
        epoch: r.get(4)?,
    })
}

pub(super) fn row_to_sweep_failure(r: &rusqlite::Row<'_>) -> rusqlite::Result<SweepFailure> {
    Ok(SweepFailure {
        lease: row_to_lease(r)?,
        attempts: u32::try_from(r.get::<_, i64>(5)?).unwrap_or(u32::MAX),
        error: r.get::<_, Option<String>>(6)?.unwrap_or_default(),
        retry_at: r.get(7)?,
    })
}

/// [`Leases::extend_lease`](super::Leases::extend_lease) on an open connection (or transaction).
pub(super) fn extend_lease_on(
    c: &Connection,
    lease: &Lease,
    now: Millis,
) -> Result<Lease, IndexError> {
    if lease.epoch.is_empty() {
        return create_or_extend_lease(c, lease, now);
    }
    let extended = c
        .query_row(
            &format!(
                "UPDATE leases SET expires_at = max(expires_at, ?4)
                 WHERE directory_bucket = ?1 AND prefix = ?2 AND source_bucket = ?3
                   AND epoch = ?5 AND expires_at > ?6
                 RETURNING {LEASE_COLUMNS}"
            ),
            params![
                lease.directory_bucket,
                lease.prefix,
                lease.source_bucket,
                lease.expires_at,
                lease.epoch,
                now
            ],
            row_to_lease,
        )
        .optional()
        .map_err(storage)?;
    match extended {
        Some(l) => Ok(l),
        None => ended_lease(c, lease, now),
    }
}

/// [`extend_lease_on`] without an epoch: creates the lease, or extends
/// it and keeps its epoch (a new epoch if it had expired at `now`).
pub(super) fn create_or_extend_lease(
    c: &Connection,
    lease: &Lease,
    now: Millis,
) -> Result<Lease, IndexError> {
    c.query_row(
        &format!(
            "INSERT INTO leases (directory_bucket, prefix, source_bucket, expires_at, epoch)
             VALUES (?1, ?2, ?3, ?4, lower(hex(randomblob(8))))
             ON CONFLICT DO UPDATE SET expires_at = max(expires_at, excluded.expires_at),
                 epoch = CASE WHEN expires_at <= ?5 THEN excluded.epoch ELSE epoch END,
                 -- a revived lease starts with a clean sweep record
                 sweep_attempts = CASE WHEN excluded.expires_at > expires_at
                     THEN 0 ELSE sweep_attempts END,
                 sweep_error = CASE WHEN excluded.expires_at > expires_at
                     THEN NULL ELSE sweep_error END,
                 sweep_retry_at = CASE WHEN excluded.expires_at > expires_at
                     THEN 0 ELSE sweep_retry_at END
             RETURNING {LEASE_COLUMNS}"
        ),
        params![
            lease.directory_bucket,
            lease.prefix,
            lease.source_bucket,
            lease.expires_at,
            now
        ],
        row_to_lease,
    )
    .map_err(storage)
}

/// The lease as stored, after an extension under `lease`'s epoch was
/// refused (another epoch holds it, or it expired at `now`); its epoch
/// emptied (ended for the caller) if it expired, or gone altogether.
pub(super) fn ended_lease(c: &Connection, lease: &Lease, now: Millis) -> Result<Lease, IndexError> {
    let key = params![lease.directory_bucket, lease.prefix, lease.source_bucket];
    let stored = c
        .query_row(
            &format!(
                "SELECT {LEASE_COLUMNS} FROM leases
                 WHERE directory_bucket = ?1 AND prefix = ?2 AND source_bucket = ?3"
            ),
            key,
            row_to_lease,
        )
        .optional()
        .map_err(storage)?;
    Ok(stored.map_or_else(
        || Lease {
            epoch: String::new(),
            expires_at: 0,
            ..lease.clone()
        },
        |mut l| {
            // Expired at `now`: ended for the caller too, even if nobody
            // changed the epoch yet.
            if l.expires_at <= now {
                l.epoch = String::new();
            }
            l
        },
    ))
}

#[async_trait::async_trait]
impl Leases for SqliteIndex {
    async fn extend_lease(&self, lease: &Lease, now: Millis) -> Result<Lease, IndexError> {
        let lease = lease.clone();
        self.with(move |c| extend_lease_on(c, &lease, now)).await
    }

    async fn extend_leases(&self, leases: &[Lease], now: Millis) -> Result<Vec<Lease>, IndexError> {
        let leases = leases.to_vec();
        self.with(move |c| {
            let tx = write_tx(c)?;
            let stored = leases
                .iter()
                .map(|l| extend_lease_on(&tx, l, now))
                .collect::<Result<Vec<_>, _>>()?;
            tx.commit().map_err(storage)?;
            Ok(stored)
        })
        .await
    }

    async fn covering_leases(
        &self,
        directory_bucket: &str,
        prefix: &str,
        now: Millis,
    ) -> Result<Vec<Lease>, IndexError> {
        let bucket = directory_bucket.to_owned();
        let candidates = ancestors(prefix);
        self.with(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {LEASE_COLUMNS} FROM leases
                     WHERE directory_bucket = ?1 AND prefix = ?2 AND expires_at > ?3
                     ORDER BY source_bucket"
                ))
                .map_err(storage)?;
            let mut out = Vec::new();
            for p in &candidates {
                let rows = stmt
                    .query_map(params![bucket, p, now], row_to_lease)
                    .map_err(storage)?;
                for l in rows {
                    out.push(l.map_err(storage)?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn leases_under(
        &self,
        directory_bucket: &str,
        prefix: &str,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<Lease>, IndexError> {
        let bucket = directory_bucket.to_owned();
        let lo = prefix.to_owned();
        let hi = prefix_successor(prefix);
        let limit = to_i64(limit as u64);
        self.with(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {LEASE_COLUMNS} FROM leases
                     WHERE directory_bucket = ?1 AND prefix > ?2 AND (?3 IS NULL OR prefix < ?3)
                       AND expires_at > ?4
                     ORDER BY prefix, source_bucket LIMIT ?5"
                ))
                .map_err(storage)?;
            let rows = stmt
                .query_map(params![bucket, lo, hi, now, limit], row_to_lease)
                .map_err(storage)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(storage)
        })
        .await
    }

    async fn end_leases(
        &self,
        directory_bucket: &str,
        prefix: &str,
        now: Millis,
    ) -> Result<Vec<Lease>, IndexError> {
        let bucket = directory_bucket.to_owned();
        let lo = prefix.to_owned();
        let hi = prefix_successor(prefix);
        self.with(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "UPDATE leases SET expires_at = ?4, epoch = lower(hex(randomblob(8)))
                     WHERE directory_bucket = ?1 AND prefix >= ?2 AND (?3 IS NULL OR prefix < ?3)
                       AND expires_at > ?4
                     RETURNING {LEASE_COLUMNS}"
                ))
                .map_err(storage)?;
            let rows = stmt
                .query_map(params![bucket, lo, hi, now], row_to_lease)
                .map_err(storage)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(storage)
        })
        .await
    }

    async fn expired_leases(&self, now: Millis, limit: usize) -> Result<Vec<Lease>, IndexError> {
        let limit = to_i64(limit as u64);
        self.with(move |c| {
            // Handing a lease to the sweeper rotates its epoch in the same
            // transaction: a warm renewal that still names the old epoch can
            // no longer extend it once deletion under it may begin.
            let tx = write_tx(c)?;
            let leases = {
                let mut stmt = tx
                    .prepare_cached(&format!(
                        "UPDATE leases SET epoch = lower(hex(randomblob(8)))
                         WHERE (directory_bucket, prefix, source_bucket) IN (
                             SELECT directory_bucket, prefix, source_bucket FROM leases
                             WHERE expires_at <= ?1 AND sweep_retry_at <= ?1
                             ORDER BY expires_at LIMIT ?2)
                         RETURNING {LEASE_COLUMNS}"
                    ))
                    .map_err(storage)?;
                let rows = stmt
                    .query_map(params![now, limit], row_to_lease)
                    .map_err(storage)?;
                let mut leases = rows.collect::<Result<Vec<_>, _>>().map_err(storage)?;
                leases.sort_by_key(|l| l.expires_at);
                leases
            };
            tx.commit().map_err(storage)?;
            Ok(leases)
        })
        .await
    }

    async fn defer_sweep(
        &self,
        lease: &Lease,
        error: &str,
        backoff: &SweepBackoff,
    ) -> Result<SweepFailure, IndexError> {
        let (lease, error, b) = (lease.clone(), error.to_owned(), *backoff);
        self.with(move |c| {
            c.query_row(
                &format!(
                    "UPDATE leases SET sweep_attempts = sweep_attempts + 1, sweep_error = ?4,
                         sweep_retry_at = ?5 + min(?7, ?6 << min(sweep_attempts, 16))
                     WHERE directory_bucket = ?1 AND prefix = ?2 AND source_bucket = ?3
                       AND expires_at = ?8
                     RETURNING {LEASE_COLUMNS}, sweep_attempts, sweep_error, sweep_retry_at"
                ),
                // Only while the lease is as the sweeper read it: a warm that
                // revived it meanwhile owes no sweep.
                params![
                    lease.directory_bucket,
                    lease.prefix,
                    lease.source_bucket,
                    error,
                    b.now,
                    b.base,
                    b.max,
                    lease.expires_at
                ],
                row_to_sweep_failure,
            )
            .optional()
            .map_err(storage)?
            // Revived or removed meanwhile: nothing to record; report the
            // failure as given.
            .map_or_else(
                || {
                    Ok(SweepFailure {
                        lease,
                        attempts: 1,
                        error,
                        retry_at: b.now.saturating_add(b.base),
                    })
                },
                Ok,
            )
        })
        .await
    }

    async fn sweep_failures(
        &self,
        directory_bucket: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<SweepFailure>, IndexError> {
        let bucket = directory_bucket.to_owned();
        let lo = prefix.to_owned();
        let hi = prefix_successor(prefix);
        let covering = ancestors(prefix);
        self.with(move |c| {
            let cols = format!("{LEASE_COLUMNS}, sweep_attempts, sweep_error, sweep_retry_at");
            let mut out = Vec::new();
            // Ancestors first (they sort before the prefix's own range).
            let mut at = c
                .prepare_cached(&format!(
                    "SELECT {cols} FROM leases WHERE directory_bucket = ?1 AND prefix = ?2
                       AND sweep_attempts > 0 ORDER BY source_bucket"
                ))
                .map_err(storage)?;
            for p in covering.iter().filter(|p| **p != lo) {
                let rows = at
                    .query_map(params![bucket, p], row_to_sweep_failure)
                    .map_err(storage)?;
                for r in rows {
                    out.push(r.map_err(storage)?);
                }
            }
            let mut under = c
                .prepare_cached(&format!(
                    "SELECT {cols} FROM leases
                     WHERE directory_bucket = ?1 AND prefix >= ?2 AND (?3 IS NULL OR prefix < ?3)
                       AND sweep_attempts > 0
                     ORDER BY prefix, source_bucket LIMIT ?4"
                ))
                .map_err(storage)?;
            let rows = under
                .query_map(
                    params![bucket, lo, hi, to_i64(limit as u64)],
                    row_to_sweep_failure,
                )
                .map_err(storage)?;
            for r in rows {
                out.push(r.map_err(storage)?);
            }
            out.truncate(limit);
            Ok(out)
        })
        .await
    }

    async fn remove_lease_if_expired(
        &self,
        lease: &Lease,
        now: Millis,
    ) -> Result<bool, IndexError> {
        let lease = lease.clone();
        self.with(move |c| {
            let n = c
                .execute(
                    "DELETE FROM leases WHERE directory_bucket = ?1 AND prefix = ?2
                     AND source_bucket = ?3 AND expires_at <= ?4",
                    params![
                        lease.directory_bucket,
                        lease.prefix,
                        lease.source_bucket,
                        now
                    ],
                )
                .map_err(storage)?;
            Ok(n > 0)
        })
        .await
    }
}
