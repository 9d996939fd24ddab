//! The embedded [`CacheIndex`]: one SQLite file, WAL mode.
//!
//! rusqlite is synchronous, so every call runs on tokio's blocking pool
//! against one connection behind a mutex: SQLite serialises writers anyway,
//! and one connection keeps each call's statements in one transaction.

use std::path::Path;
use std::sync::{Arc, Mutex};

use expresscache::proto::v1 as pb;
use prost::Message;
use rusqlite::{params, Connection, OptionalExtension};

use super::{
    prefix_successor, CacheIndex, CreateOutcome, Entry, IndexError, Lease, Millis, OperationRecord,
    Usage,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS entries (
    directory_bucket     TEXT    NOT NULL,
    key                  TEXT    NOT NULL,
    source_bucket        TEXT    NOT NULL,
    source_key           TEXT    NOT NULL,
    source_etag          TEXT    NOT NULL,
    size                 INTEGER NOT NULL,
    source_last_modified INTEGER,
    dest_etag            TEXT    NOT NULL,
    cached_at            INTEGER NOT NULL,
    PRIMARY KEY (directory_bucket, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    directory_bucket TEXT    NOT NULL,
    prefix           TEXT    NOT NULL,
    source_bucket    TEXT    NOT NULL,
    expires_at       INTEGER NOT NULL,
    PRIMARY KEY (directory_bucket, prefix, source_bucket)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS operations (
    id         TEXT PRIMARY KEY,
    request_id TEXT UNIQUE,
    request    BLOB    NOT NULL,
    progress   BLOB    NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
";

/// SQLite-backed [`CacheIndex`].
#[derive(Debug, Clone)]
pub struct SqliteIndex {
    conn: Arc<Mutex<Connection>>,
}

fn storage(e: impl std::fmt::Display) -> IndexError {
    IndexError::Storage(e.to_string())
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl SqliteIndex {
    /// Opens (creating if needed) the index at `path`.
    pub fn open(path: &Path) -> Result<Self, IndexError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                IndexError::Storage(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let conn = Connection::open(path)
            .map_err(|e| IndexError::Storage(format!("cannot open {}: {e}", path.display())))?;
        Self::init(conn)
    }

    /// A private index that lives as long as this value (for tests).
    pub fn open_in_memory() -> Result<Self, IndexError> {
        Self::init(Connection::open_in_memory().map_err(storage)?)
    }

    fn init(conn: Connection) -> Result<Self, IndexError> {
        // WAL lets status reads proceed during a warm's entry writes;
        // NORMAL sync is durable across process crashes, which is what the
        // index must survive (a power cut can at worst lose recent entries,
        // which only costs a recopy).
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(storage)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(storage)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(storage)?;
        conn.execute_batch(SCHEMA).map_err(storage)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn with<R, F>(&self, f: F) -> Result<R, IndexError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, IndexError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| IndexError::Storage(format!("index task failed: {e}")))?
    }
}

/// `prefix` and each of its ancestors ("" and every shorter prefix ending
/// in '/').
fn ancestors(prefix: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    out.extend(
        prefix
            .char_indices()
            .filter(|(_, c)| *c == '/')
            .map(|(i, _)| prefix[..=i].to_owned()),
    );
    if !prefix.is_empty() && !prefix.ends_with('/') {
        out.push(prefix.to_owned());
    }
    out
}

fn row_to_entry(row: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    Ok(Entry {
        directory_bucket: row.get(0)?,
        key: row.get(1)?,
        source_bucket: row.get(2)?,
        source_key: row.get(3)?,
        source_etag: row.get(4)?,
        size: u64::try_from(row.get::<_, i64>(5)?).unwrap_or(0),
        source_last_modified: row.get(6)?,
        dest_etag: row.get(7)?,
        cached_at: row.get(8)?,
    })
}

fn decode_op(
    id: String,
    request_id: Option<String>,
    request: Vec<u8>,
    progress: Vec<u8>,
    created_at: Millis,
) -> Result<OperationRecord, IndexError> {
    Ok(OperationRecord {
        request: pb::WarmCacheRequest::decode(request.as_slice())
            .map_err(|e| IndexError::Corrupt(format!("operation {id} request: {e}")))?,
        progress: pb::WarmProgress::decode(progress.as_slice())
            .map_err(|e| IndexError::Corrupt(format!("operation {id} progress: {e}")))?,
        id,
        request_id,
        created_at,
    })
}

type OpRow = (String, Option<String>, Vec<u8>, Vec<u8>, Millis);

fn read_op(row: &rusqlite::Row<'_>) -> rusqlite::Result<OpRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
    ))
}

const OP_COLUMNS: &str = "id, request_id, request, progress, created_at";

#[async_trait::async_trait]
impl CacheIndex for SqliteIndex {
    async fn extend_lease(&self, lease: &Lease) -> Result<Lease, IndexError> {
        let lease = lease.clone();
        self.with(move |c| {
            let expires_at: Millis = c
                .query_row(
                    "INSERT INTO leases (directory_bucket, prefix, source_bucket, expires_at)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT DO UPDATE SET expires_at = max(expires_at, excluded.expires_at)
                     RETURNING expires_at",
                    params![
                        lease.directory_bucket,
                        lease.prefix,
                        lease.source_bucket,
                        lease.expires_at
                    ],
                    |r| r.get(0),
                )
                .map_err(storage)?;
            Ok(Lease {
                expires_at,
                ..lease
            })
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
                .prepare_cached(
                    "SELECT directory_bucket, prefix, source_bucket, expires_at FROM leases
                     WHERE directory_bucket = ?1 AND prefix = ?2 AND expires_at > ?3",
                )
                .map_err(storage)?;
            let mut out = Vec::new();
            for p in &candidates {
                let rows = stmt
                    .query_map(params![bucket, p, now], |r| {
                        Ok(Lease {
                            directory_bucket: r.get(0)?,
                            prefix: r.get(1)?,
                            source_bucket: r.get(2)?,
                            expires_at: r.get(3)?,
                        })
                    })
                    .map_err(storage)?;
                for l in rows {
                    out.push(l.map_err(storage)?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn end_leases(&self, directory_bucket: &str, prefix: &str) -> Result<u64, IndexError> {
        let bucket = directory_bucket.to_owned();
        let lo = prefix.to_owned();
        let hi = prefix_successor(prefix);
        self.with(move |c| {
            let n = c
                .execute(
                    "DELETE FROM leases WHERE directory_bucket = ?1 AND prefix >= ?2
                     AND (?3 IS NULL OR prefix < ?3)",
                    params![bucket, lo, hi],
                )
                .map_err(storage)?;
            Ok(n as u64)
        })
        .await
    }

    async fn entries(
        &self,
        directory_bucket: &str,
        prefix: &str,
        after: Option<&str>,
        upto: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Entry>, IndexError> {
        let bucket = directory_bucket.to_owned();
        let lo = prefix.to_owned();
        let hi = prefix_successor(prefix);
        let after = after.map(str::to_owned);
        let upto = upto.map(str::to_owned);
        let limit = to_i64(limit as u64);
        self.with(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT directory_bucket, key, source_bucket, source_key, source_etag, size,
                            source_last_modified, dest_etag, cached_at
                     FROM entries
                     WHERE directory_bucket = ?1 AND key >= ?2 AND (?3 IS NULL OR key < ?3)
                       AND (?4 IS NULL OR key > ?4) AND (?5 IS NULL OR key <= ?5)
                     ORDER BY key LIMIT ?6",
                )
                .map_err(storage)?;
            let rows = stmt
                .query_map(params![bucket, lo, hi, after, upto, limit], row_to_entry)
                .map_err(storage)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(storage)
        })
        .await
    }

    async fn put_entries(&self, entries: &[Entry]) -> Result<(), IndexError> {
        if entries.is_empty() {
            return Ok(());
        }
        let entries = entries.to_vec();
        self.with(move |c| {
            let tx = c.transaction().map_err(storage)?;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT OR REPLACE INTO entries (directory_bucket, key, source_bucket,
                            source_key, source_etag, size, source_last_modified, dest_etag, cached_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    )
                    .map_err(storage)?;
                for e in &entries {
                    stmt.execute(params![
                        e.directory_bucket,
                        e.key,
                        e.source_bucket,
                        e.source_key,
                        e.source_etag,
                        to_i64(e.size),
                        e.source_last_modified,
                        e.dest_etag,
                        e.cached_at
                    ])
                    .map_err(storage)?;
                }
            }
            tx.commit().map_err(storage)
        })
        .await
    }

    async fn delete_entries(
        &self,
        directory_bucket: &str,
        keys: &[String],
    ) -> Result<(), IndexError> {
        let bucket = directory_bucket.to_owned();
        let keys = keys.to_vec();
        self.with(move |c| {
            let tx = c.transaction().map_err(storage)?;
            {
                let mut stmt = tx
                    .prepare_cached("DELETE FROM entries WHERE directory_bucket = ?1 AND key = ?2")
                    .map_err(storage)?;
                for k in &keys {
                    stmt.execute(params![bucket, k]).map_err(storage)?;
                }
            }
            tx.commit().map_err(storage)
        })
        .await
    }

    async fn usage(&self, directory_bucket: &str, prefix: &str) -> Result<Usage, IndexError> {
        let bucket = directory_bucket.to_owned();
        let lo = prefix.to_owned();
        let hi = prefix_successor(prefix);
        self.with(move |c| {
            let (objects, bytes): (i64, i64) = c
                .query_row(
                    "SELECT count(*), coalesce(sum(size), 0) FROM entries
                     WHERE directory_bucket = ?1 AND key >= ?2 AND (?3 IS NULL OR key < ?3)",
                    params![bucket, lo, hi],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(storage)?;
            Ok(Usage {
                objects: objects.max(0) as u64,
                bytes: bytes.max(0) as u64,
            })
        })
        .await
    }

    async fn create_operation(&self, op: &OperationRecord) -> Result<CreateOutcome, IndexError> {
        let op = op.clone();
        self.with(move |c| {
            let tx = c.transaction().map_err(storage)?;
            if let Some(rid) = &op.request_id {
                let existing = tx
                    .query_row(
                        &format!("SELECT {OP_COLUMNS} FROM operations WHERE request_id = ?1"),
                        params![rid],
                        read_op,
                    )
                    .optional()
                    .map_err(storage)?;
                if let Some((id, rid, req, prog, created)) = existing {
                    return Ok(CreateOutcome::Exists(Box::new(decode_op(
                        id, rid, req, prog, created,
                    )?)));
                }
            }
            tx.execute(
                "INSERT INTO operations (id, request_id, request, progress, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                params![
                    op.id,
                    op.request_id,
                    op.request.encode_to_vec(),
                    op.progress.encode_to_vec(),
                    op.created_at
                ],
            )
            .map_err(storage)?;
            tx.commit().map_err(storage)?;
            Ok(CreateOutcome::Created)
        })
        .await
    }

    async fn update_operation(
        &self,
        id: &str,
        progress: &pb::WarmProgress,
    ) -> Result<(), IndexError> {
        let id = id.to_owned();
        let bytes = progress.encode_to_vec();
        self.with(move |c| {
            c.execute(
                "UPDATE operations SET progress = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, bytes, super::now_millis()],
            )
            .map_err(storage)?;
            Ok(())
        })
        .await
    }

    async fn get_operation(&self, id: &str) -> Result<Option<OperationRecord>, IndexError> {
        let id = id.to_owned();
        self.with(move |c| {
            let row = c
                .query_row(
                    &format!("SELECT {OP_COLUMNS} FROM operations WHERE id = ?1"),
                    params![id],
                    read_op,
                )
                .optional()
                .map_err(storage)?;
            row.map(|(id, rid, req, prog, created)| decode_op(id, rid, req, prog, created))
                .transpose()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conforms_in_memory() {
        crate::index::conformance::run_all(&SqliteIndex::open_in_memory().unwrap()).await;
    }

    #[tokio::test]
    async fn conforms_on_disk_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/index.db");
        let index = SqliteIndex::open(&path).unwrap();
        crate::index::conformance::run_all(&index).await;
        drop(index);
        let reopened = SqliteIndex::open(&path).unwrap();
        assert!(reopened.get_operation("op1").await.unwrap().is_some());
    }

    #[test]
    fn ancestors_of_a_prefix() {
        assert_eq!(ancestors(""), [""]);
        assert_eq!(ancestors("a/b/"), ["", "a/", "a/b/"]);
    }
}
