//! Claims: taking, renewing and releasing copy claims, recording copies,
//! and the eviction protocol's claims.

use super::*;

pub(super) const COPY: &str = "copy";

pub(super) const EVICT: &str = "evict";

/// Drops `owner`'s claim on `key`, and the record with it if nothing is
/// cached there.
pub(super) fn drop_claim(
    c: &Connection,
    bucket: &str,
    key: &str,
    owner: &str,
) -> Result<(), IndexError> {
    c.execute(
        "UPDATE records SET claim_owner = NULL, claim_kind = NULL, claim_deadline = NULL
         WHERE directory_bucket = ?1 AND key = ?2 AND claim_owner = ?3",
        params![bucket, key, owner],
    )
    .map_err(storage)?;
    c.execute(
        "DELETE FROM records WHERE directory_bucket = ?1 AND key = ?2
         AND source_etag IS NULL AND claim_owner IS NULL",
        params![bucket, key],
    )
    .map_err(storage)?;
    Ok(())
}

#[async_trait::async_trait]
impl Claims for SqliteIndex {
    async fn claim_copies(
        &self,
        directory_bucket: &str,
        keys: &[String],
        terms: &ClaimTerms<'_>,
    ) -> Result<Vec<ClaimOutcome>, IndexError> {
        let (bucket, keys, owner) = (
            directory_bucket.to_owned(),
            keys.to_vec(),
            terms.owner.to_owned(),
        );
        let (deadline, now) = (terms.deadline, terms.now);
        let lineage = lineage(terms.owner).map(str::to_owned);
        self.with(move |c| {
            let tx = write_tx(c)?;
            let mut out = Vec::with_capacity(keys.len());
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT INTO records (directory_bucket, key, claim_owner, claim_kind, claim_deadline)
                         VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT DO UPDATE SET claim_owner = excluded.claim_owner,
                             claim_kind = excluded.claim_kind, claim_deadline = excluded.claim_deadline,
                             -- an eviction that lapsed may have deleted the object:
                             -- the entry stays untrusted until this copy records
                             unconfirmed = CASE WHEN claim_kind = 'evict' THEN 1 ELSE unconfirmed END
                         WHERE claim_owner IS NULL OR claim_deadline <= ?6 OR claim_owner = ?3
                            -- an earlier attempt of the claimant's operation (Claim::blocks)
                            OR (?7 IS NOT NULL AND substr(claim_owner, 1, length(?7)) = ?7
                                AND claim_owner < ?3)",
                    )
                    .map_err(storage)?;
                for key in &keys {
                    let changed = stmt
                        .execute(params![bucket, key, owner, COPY, deadline, now, lineage])
                        .map_err(storage)?;
                    out.push(if changed > 0 {
                        ClaimOutcome::Claimed
                    } else {
                        let claim = read_record(&tx, &bucket, key)?
                            .and_then(|r| r.claim)
                            .ok_or_else(|| IndexError::Corrupt(format!("claim on {key} vanished")))?;
                        ClaimOutcome::Held(claim)
                    });
                }
            }
            tx.commit().map_err(storage)?;
            Ok(out)
        })
        .await
    }

    async fn renew_claim(
        &self,
        directory_bucket: &str,
        key: &str,
        owner: &str,
        deadline: Millis,
    ) -> Result<bool, IndexError> {
        let (bucket, key, owner) = (
            directory_bucket.to_owned(),
            key.to_owned(),
            owner.to_owned(),
        );
        self.with(move |c| {
            let n = c
                .execute(
                    "UPDATE records SET claim_deadline = max(claim_deadline, ?4)
                     WHERE directory_bucket = ?1 AND key = ?2 AND claim_owner = ?3
                       AND claim_kind = ?5",
                    params![bucket, key, owner, deadline, COPY],
                )
                .map_err(storage)?;
            Ok(n > 0)
        })
        .await
    }

    async fn complete_copies(
        &self,
        entries: &[Entry],
        owner: &str,
    ) -> Result<Vec<Completion>, IndexError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let (entries, owner) = (entries.to_vec(), owner.to_owned());
        self.with(move |c| {
            let tx = write_tx(c)?;
            let mut out = Vec::with_capacity(entries.len());
            {
                // Only the claim's holder may record: the claim created the
                // row, so no row or another owner means the claim was lost.
                let mut stmt = tx
                    .prepare_cached(
                        "UPDATE records SET source_bucket = ?3, source_key = ?4, source_etag = ?5,
                             size = ?6, source_last_modified = ?7, dest_etag = ?8, cached_at = ?9,
                             claim_owner = NULL, claim_kind = NULL, claim_deadline = NULL,
                             unconfirmed = 0
                         WHERE directory_bucket = ?1 AND key = ?2
                           AND claim_owner = ?10 AND claim_kind = ?11",
                    )
                    .map_err(storage)?;
                for e in &entries {
                    let changed = stmt
                        .execute(params![
                            e.directory_bucket,
                            e.key,
                            e.source_bucket,
                            e.source_key,
                            e.source_etag,
                            to_i64(e.size),
                            e.source_last_modified,
                            e.dest_etag,
                            e.cached_at,
                            owner,
                            COPY
                        ])
                        .map_err(storage)?;
                    out.push(if changed > 0 {
                        Completion::Recorded
                    } else {
                        Completion::ClaimLost
                    });
                }
            }
            tx.commit().map_err(storage)?;
            Ok(out)
        })
        .await
    }

    async fn release_claim(
        &self,
        directory_bucket: &str,
        key: &str,
        owner: &str,
    ) -> Result<(), IndexError> {
        let (bucket, key, owner) = (
            directory_bucket.to_owned(),
            key.to_owned(),
            owner.to_owned(),
        );
        self.with(move |c| {
            let tx = write_tx(c)?;
            drop_claim(&tx, &bucket, &key, &owner)?;
            tx.commit().map_err(storage)
        })
        .await
    }

    async fn begin_evict(
        &self,
        directory_bucket: &str,
        keys: &[String],
        terms: &ClaimTerms<'_>,
        force: bool,
    ) -> Result<Vec<EvictDecision>, IndexError> {
        let (bucket, keys, owner) = (
            directory_bucket.to_owned(),
            keys.to_vec(),
            terms.owner.to_owned(),
        );
        let (deadline, now) = (terms.deadline, terms.now);
        self.with(move |c| {
            let tx = write_tx(c)?;
            let mut out = Vec::with_capacity(keys.len());
            for key in &keys {
                let Some(Record {
                    entry: Some(entry),
                    claim,
                    ..
                }) = read_record(&tx, &bucket, key)?
                else {
                    out.push(EvictDecision::Absent);
                    continue;
                };
                if let Some(claim) = claim.filter(|cl| cl.is_live(now) && cl.owner != owner) {
                    out.push(EvictDecision::Busy(claim));
                    continue;
                }
                if !force {
                    let mut stmt = tx
                        .prepare_cached(
                            "SELECT 1 FROM leases WHERE directory_bucket = ?1 AND prefix = ?2
                             AND expires_at > ?3 LIMIT 1",
                        )
                        .map_err(storage)?;
                    let mut live = None;
                    for p in ancestors(key) {
                        if stmt.exists(params![bucket, p, now]).map_err(storage)? {
                            live = Some(p);
                            break;
                        }
                    }
                    if let Some(p) = live {
                        out.push(EvictDecision::Live(p));
                        continue;
                    }
                }
                tx.execute(
                    "UPDATE records SET claim_owner = ?3, claim_kind = ?4, claim_deadline = ?5
                     WHERE directory_bucket = ?1 AND key = ?2",
                    params![bucket, key, owner, EVICT, deadline],
                )
                .map_err(storage)?;
                out.push(EvictDecision::Marked(entry));
            }
            tx.commit().map_err(storage)?;
            Ok(out)
        })
        .await
    }

    async fn abandon_evict(
        &self,
        directory_bucket: &str,
        keys: &[String],
        owner: &str,
        deadline: Millis,
    ) -> Result<(), IndexError> {
        let (bucket, keys, owner) = (directory_bucket.to_owned(), keys.to_vec(), owner.to_owned());
        self.with(move |c| {
            let tx = write_tx(c)?;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "UPDATE records SET unconfirmed = 1, claim_deadline = min(claim_deadline, ?5)
                         WHERE directory_bucket = ?1 AND key = ?2 AND claim_owner = ?3
                           AND claim_kind = ?4",
                    )
                    .map_err(storage)?;
                for k in &keys {
                    stmt.execute(params![bucket, k, owner, EVICT, deadline])
                        .map_err(storage)?;
                }
            }
            tx.commit().map_err(storage)
        })
        .await
    }

    async fn finish_evict(
        &self,
        directory_bucket: &str,
        keys: &[String],
        owner: &str,
    ) -> Result<(), IndexError> {
        self.for_each_evicting(
            directory_bucket,
            keys,
            owner,
            "DELETE FROM records
             WHERE directory_bucket = ?1 AND key = ?2 AND claim_owner = ?3 AND claim_kind = ?4",
        )
        .await
    }
}
