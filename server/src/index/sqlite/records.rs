//! Records: key-ordered reads of entries and claims, and usage counts.

use super::*;

pub(super) const RECORD_COLUMNS: &str =
    "directory_bucket, key, source_bucket, source_key, source_etag, size,
    source_last_modified, dest_etag, cached_at, claim_owner, claim_kind, claim_deadline,
    unconfirmed";

pub(super) fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    let directory_bucket: String = row.get(0)?;
    let key: String = row.get(1)?;
    let source_etag: Option<String> = row.get(4)?;
    let entry = match source_etag {
        Some(source_etag) => Some(Entry {
            directory_bucket,
            key: key.clone(),
            source_bucket: row.get::<_, Option<String>>(2)?.unwrap_or_default(),
            source_key: row.get::<_, Option<String>>(3)?.unwrap_or_default(),
            source_etag,
            size: u64::try_from(row.get::<_, Option<i64>>(5)?.unwrap_or(0)).unwrap_or(0),
            source_last_modified: row.get(6)?,
            dest_etag: row.get::<_, Option<String>>(7)?.unwrap_or_default(),
            cached_at: row.get::<_, Option<i64>>(8)?.unwrap_or(0),
        }),
        None => None,
    };
    let owner: Option<String> = row.get(9)?;
    let claim = match owner {
        Some(owner) => Some(Claim {
            owner,
            kind: if row.get::<_, Option<String>>(10)?.as_deref() == Some(EVICT) {
                ClaimKind::Evict
            } else {
                ClaimKind::Copy
            },
            deadline: row.get::<_, Option<i64>>(11)?.unwrap_or(0),
        }),
        None => None,
    };
    let unconfirmed = row.get::<_, i64>(12)? != 0;
    Ok(Record {
        key,
        entry,
        claim,
        unconfirmed,
    })
}

pub(super) fn read_record(
    c: &Connection,
    bucket: &str,
    key: &str,
) -> Result<Option<Record>, IndexError> {
    c.prepare_cached(&format!(
        "SELECT {RECORD_COLUMNS} FROM records WHERE directory_bucket = ?1 AND key = ?2"
    ))
    .map_err(storage)?
    .query_row(params![bucket, key], row_to_record)
    .optional()
    .map_err(storage)
}

#[async_trait::async_trait]
impl Records for SqliteIndex {
    async fn records(
        &self,
        directory_bucket: &str,
        range: &KeyRange<'_>,
        limit: usize,
    ) -> Result<Vec<Record>, IndexError> {
        let bucket = directory_bucket.to_owned();
        let (lower, upper) = range.interval();
        let limit = to_i64(limit as u64);
        self.with(move |c| {
            // Both bounds are plain comparisons on the primary key, so SQLite
            // seeks straight to the range instead of scanning from the
            // prefix's start (which made paging quadratic).
            let (lo_op, lo) = match lower {
                Bound::Included(k) => (">=", k),
                Bound::Excluded(k) => (">", k),
                Bound::Unbounded => (">=", String::new()),
            };
            let (hi_cond, hi) = match upper {
                Bound::Included(k) => ("AND key <= ?3", Some(k)),
                Bound::Excluded(k) => ("AND key < ?3", Some(k)),
                Bound::Unbounded => ("AND ?3 IS NULL", None),
            };
            let sql = format!(
                "SELECT {RECORD_COLUMNS} FROM records
                 WHERE directory_bucket = ?1 AND key {lo_op} ?2 {hi_cond}
                 ORDER BY key LIMIT ?4"
            );
            let mut stmt = c.prepare_cached(&sql).map_err(storage)?;
            let rows = stmt
                .query_map(params![bucket, lo, hi, limit], row_to_record)
                .map_err(storage)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(storage)
        })
        .await
    }

    async fn get_record(
        &self,
        directory_bucket: &str,
        key: &str,
    ) -> Result<Option<Record>, IndexError> {
        let (bucket, key) = (directory_bucket.to_owned(), key.to_owned());
        self.with(move |c| read_record(c, &bucket, &key)).await
    }

    /// Counted in chunks, each its own short hold of the connection, so
    /// a status call over a large prefix never stalls the warms' writes.
    async fn usage_up_to(
        &self,
        directory_bucket: &str,
        prefix: &str,
        limit: u64,
    ) -> Result<Usage, IndexError> {
        const CHUNK: u64 = 10_000;
        // One more than the limit tells "exactly limit" from "more".
        let budget = limit.saturating_add(1);
        let mut usage = Usage::default();
        let mut after: Option<String> = None;
        loop {
            let take = CHUNK.min(budget - usage.objects);
            if take == 0 {
                usage.truncated = true;
                return Ok(usage);
            }
            let (bucket, lo, hi, from) = (
                directory_bucket.to_owned(),
                prefix.to_owned(),
                prefix_successor(prefix),
                after.take(),
            );
            let (n, bytes, last) = self
                .with(move |c| {
                    let sql = format!(
                        "SELECT count(*), coalesce(sum(size), 0), max(key) FROM (
                           SELECT key, size FROM records
                           WHERE directory_bucket = ?1 AND key >= ?2 {} {}
                             AND source_etag IS NOT NULL
                           ORDER BY key LIMIT ?5)",
                        if hi.is_some() {
                            "AND key < ?3"
                        } else {
                            "AND ?3 IS NULL"
                        },
                        if from.is_some() {
                            "AND key > ?4"
                        } else {
                            "AND ?4 IS NULL"
                        }
                    );
                    c.prepare_cached(&sql)
                        .map_err(storage)?
                        .query_row(
                            params![
                                bucket,
                                lo,
                                hi,
                                from,
                                i64::try_from(take).unwrap_or(i64::MAX)
                            ],
                            |r| {
                                Ok((
                                    r.get::<_, i64>(0)?,
                                    r.get::<_, i64>(1)?,
                                    r.get::<_, Option<String>>(2)?,
                                ))
                            },
                        )
                        .map_err(storage)
                })
                .await?;
            usage.objects += n.max(0) as u64;
            usage.bytes += bytes.max(0) as u64;
            if (n.max(0) as u64) < take {
                return Ok(usage);
            }
            after = last;
        }
    }
}
