//! The embedded index: one SQLite file, WAL mode. Each capability's
//! trait is implemented in a file of its own (leases, records, claims,
//! operations, runs, replicas); this one opens, migrates and shares the
//! connection.
//!
//! rusqlite is synchronous, so every call runs on tokio's blocking pool
//! against one connection behind a mutex: SQLite serialises writers anyway,
//! and one connection keeps each call's statements in one transaction.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};

use crate::core::clock::{Clock, SystemClock};

use super::{
    ancestors, lineage, prefix_successor, Claim, ClaimKind, ClaimOutcome, ClaimTerms, Claims,
    Completion, CreateOutcome, Entry, EvictDecision, IndexError, KeyRange, Lease, Leases, Millis,
    OpFilter, OperationLog, OperationRecord, Record, Records, RunLeases, SweepBackoff,
    SweepFailure, Usage,
};
use super::{encoding, legacy, Renewal, ReplicaRegistry, RunLease, RunTerms, RunTicket, Takeover};
use crate::core::operation::OperationState;

mod claims;
mod leases;
mod operations;
mod records;
mod replicas;
mod runs;

use claims::*;
use records::*;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
    directory_bucket     TEXT    NOT NULL,
    key                  TEXT    NOT NULL,
    -- the cached version; all NULL until a copy succeeded
    source_bucket        TEXT,
    source_key           TEXT,
    source_etag          TEXT,
    size                 INTEGER,
    source_last_modified INTEGER,
    dest_etag            TEXT,
    cached_at            INTEGER,
    -- an in-flight copy or eviction; all NULL when none
    claim_owner          TEXT,
    claim_kind           TEXT,
    claim_deadline       INTEGER,
    -- 1 once an eviction's outcome is unknown; cleared by a recorded copy
    unconfirmed          INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (directory_bucket, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    directory_bucket TEXT    NOT NULL,
    prefix           TEXT    NOT NULL,
    source_bucket    TEXT    NOT NULL,
    expires_at       INTEGER NOT NULL,
    epoch            TEXT    NOT NULL DEFAULT (lower(hex(randomblob(8)))),
    sweep_attempts   INTEGER NOT NULL DEFAULT 0,
    sweep_error      TEXT,
    sweep_retry_at   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (directory_bucket, prefix, source_bucket)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS leases_by_expiry ON leases (expires_at);
CREATE TABLE IF NOT EXISTS operations (
    id          TEXT PRIMARY KEY,
    request_id  TEXT UNIQUE,
    request     BLOB    NOT NULL,
    progress    BLOB    NOT NULL,
    done        INTEGER NOT NULL DEFAULT 0,
    resumptions INTEGER NOT NULL DEFAULT 0,
    -- interruptions that were not a graceful shutdown, and whether the
    -- last one was
    crashes     INTEGER NOT NULL DEFAULT 0,
    clean_stop  INTEGER NOT NULL DEFAULT 0,
    -- the run of an unfinished operation: replica, attempt, deadline;
    -- and whether a cancel was asked for
    run_replica      TEXT,
    run_attempt      INTEGER NOT NULL DEFAULT 0,
    run_deadline     INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    -- the attempt that offered the operation to other replicas' warms, and
    -- the latest attempt that withdrew its offer (fleet/remote.rs)
    offered_attempt   INTEGER NOT NULL DEFAULT 0,
    withdrawn_attempt INTEGER NOT NULL DEFAULT 0,
    -- 0: request and progress are prost-encoded wire messages (releases
    -- before the versioned encoding); 1: JSON documents of index::encoding
    encoding    INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS operation_leases (
    id     TEXT NOT NULL,
    prefix TEXT NOT NULL,
    epoch  TEXT NOT NULL,
    PRIMARY KEY (id, prefix)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS operations_by_age ON operations (created_at DESC, id DESC);
CREATE TABLE IF NOT EXISTS replicas (
    id       TEXT PRIMARY KEY,
    deadline INTEGER NOT NULL
) WITHOUT ROWID;
";

/// SQLite-backed [`CacheIndex`](super::CacheIndex).
#[derive(Debug, Clone)]
pub struct SqliteIndex {
    /// An async, first-come-first-served lock: a thousand warms at once (a
    /// job array) wait their turn as tasks, and only the holder occupies a
    /// blocking thread, instead of a thousand blocking threads convoying
    /// on one mutex, each woken to find it taken.
    conn: Arc<tokio::sync::Mutex<Connection>>,
    /// Stamps operation records' `updated_at` (which retention compares
    /// with the same clock).
    clock: Arc<dyn Clock>,
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

    /// Reads time from `clock` instead of the system clock.
    #[must_use]
    #[cfg(any(test, feature = "testing"))]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// A private index that lives as long as this value (for tests).
    pub fn open_in_memory() -> Result<Self, IndexError> {
        Self::init(Connection::open_in_memory().map_err(storage)?)
    }

    fn init(mut conn: Connection) -> Result<Self, IndexError> {
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
        migrate(&mut conn)?;
        // After the migration (an older file gains `offered_attempt`
        // there): the few unfinished operations that offered themselves,
        // so a lookup of offers (a waiting leader's, once a second) reads
        // those rather than the whole history.
        conn.execute_batch(
            "CREATE INDEX IF NOT EXISTS operations_offered ON operations (created_at, id)
             WHERE done = 0 AND offered_attempt > 0;",
        )
        .map_err(storage)?;
        Ok(Self {
            conn: Arc::new(tokio::sync::Mutex::new(conn)),
            clock: Arc::new(SystemClock),
        })
    }

    /// Runs `sql` (parameters: bucket, key, owner, kind) for each key still
    /// claimed for eviction by `owner`, in one transaction.
    async fn for_each_evicting(
        &self,
        directory_bucket: &str,
        keys: &[String],
        owner: &str,
        sql: &'static str,
    ) -> Result<(), IndexError> {
        let (bucket, keys, owner) = (directory_bucket.to_owned(), keys.to_vec(), owner.to_owned());
        self.with(move |c| {
            let tx = write_tx(c)?;
            {
                let mut stmt = tx.prepare_cached(sql).map_err(storage)?;
                for k in &keys {
                    stmt.execute(params![bucket, k, owner, EVICT])
                        .map_err(storage)?;
                }
            }
            tx.commit().map_err(storage)
        })
        .await
    }

    async fn with<R, F>(&self, f: F) -> Result<R, IndexError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, IndexError> + Send + 'static,
    {
        let mut conn = Arc::clone(&self.conn).lock_owned().await;
        tokio::task::spawn_blocking(move || f(&mut conn))
            .await
            .map_err(|e| IndexError::Storage(format!("index task failed: {e}")))?
    }
}

/// Columns added to `leases` after the first release, for index files
/// created before them (SQLite cannot add a column with a non-constant
/// default, so an old file's leases get a constant epoch: it still changes
/// when a lease is ended).
const MIGRATIONS: &[(&str, &str, &str)] = &[
    (
        "operations",
        "crashes",
        "ALTER TABLE operations ADD COLUMN crashes INTEGER NOT NULL DEFAULT 0",
    ),
    (
        "operations",
        "clean_stop",
        "ALTER TABLE operations ADD COLUMN clean_stop INTEGER NOT NULL DEFAULT 0",
    ),
    (
        "operations",
        "encoding",
        "ALTER TABLE operations ADD COLUMN encoding INTEGER NOT NULL DEFAULT 0",
    ),
    (
        "operations",
        "run_replica",
        "ALTER TABLE operations ADD COLUMN run_replica TEXT",
    ),
    (
        "operations",
        "run_attempt",
        "ALTER TABLE operations ADD COLUMN run_attempt INTEGER NOT NULL DEFAULT 0",
    ),
    (
        "operations",
        "run_deadline",
        "ALTER TABLE operations ADD COLUMN run_deadline INTEGER NOT NULL DEFAULT 0",
    ),
    (
        "operations",
        "cancel_requested",
        "ALTER TABLE operations ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0",
    ),
    (
        "operations",
        "offered_attempt",
        "ALTER TABLE operations ADD COLUMN offered_attempt INTEGER NOT NULL DEFAULT 0",
    ),
    (
        "operations",
        "withdrawn_attempt",
        "ALTER TABLE operations ADD COLUMN withdrawn_attempt INTEGER NOT NULL DEFAULT 0",
    ),
    (
        "records",
        "unconfirmed",
        "ALTER TABLE records ADD COLUMN unconfirmed INTEGER NOT NULL DEFAULT 0",
    ),
    (
        "leases",
        "epoch",
        // Existing leases share this constant; every write sets a fresh one.
        "ALTER TABLE leases ADD COLUMN epoch TEXT NOT NULL DEFAULT 'v0'",
    ),
    (
        "leases",
        "sweep_attempts",
        "ALTER TABLE leases ADD COLUMN sweep_attempts INTEGER NOT NULL DEFAULT 0",
    ),
    (
        "leases",
        "sweep_error",
        "ALTER TABLE leases ADD COLUMN sweep_error TEXT",
    ),
    (
        "leases",
        "sweep_retry_at",
        "ALTER TABLE leases ADD COLUMN sweep_retry_at INTEGER NOT NULL DEFAULT 0",
    ),
];

/// Adds the columns an index file created by an earlier release lacks, in
/// one transaction.
fn migrate(conn: &mut Connection) -> Result<(), IndexError> {
    let tx = write_tx(conn)?;
    for (table, column, sql) in MIGRATIONS {
        let present: bool = tx
            .query_row(
                "SELECT count(*) > 0 FROM pragma_table_info(?1) WHERE name = ?2",
                params![table, column],
                |r| r.get(0),
            )
            .map_err(storage)?;
        if !present {
            tx.execute_batch(sql).map_err(storage)?;
        }
    }
    reencode_operations(&tx)?;
    tx.commit().map_err(storage)
}

/// Rewrites operations stored by releases before the versioned encoding in
/// the current one. A record that cannot be read is kept as it is, set
/// aside (encoding -1: no read returns it, so it cannot fail listings) and
/// logged, for an operator to inspect; nothing is deleted. The rewrite is
/// one way: a release before it cannot read the index afterwards.
fn reencode_operations(tx: &Connection) -> Result<(), IndexError> {
    let old: Vec<(String, Vec<u8>, Vec<u8>)> = tx
        .prepare("SELECT id, request, progress FROM operations WHERE encoding = 0")
        .map_err(storage)?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map_err(storage)?
        .collect::<Result<_, _>>()
        .map_err(storage)?;
    for (id, request, progress) in old {
        match (
            legacy::request(&id, &request),
            legacy::state(&id, &progress),
        ) {
            (Ok(request), Ok(state)) => {
                tx.execute(
                    "UPDATE operations SET request = ?2, progress = ?3, encoding = 1 WHERE id = ?1",
                    params![
                        id,
                        encoding::request_json(&request),
                        encoding::state_json(&state)
                    ],
                )
                .map_err(storage)?;
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(operation_id = %id, error = %e,
                    "an operation recorded by an earlier release cannot be read; it is kept \
                     in the operations table with encoding -1 and no longer listed");
                // Its request id is freed: a resubmission starts afresh
                // instead of failing on a record nobody can read.
                tx.execute(
                    "UPDATE operations SET encoding = -1, request_id = NULL WHERE id = ?1",
                    params![id],
                )
                .map_err(storage)?;
            }
        }
    }
    Ok(())
}

/// A transaction that takes the write lock at once (IMMEDIATE). Every
/// transaction here reads and then writes; a deferred one that must
/// upgrade its lock while another connection (another server process on
/// the same file) writes fails with SQLITE_BUSY at once, without waiting
/// out the busy timeout.
fn write_tx(c: &mut Connection) -> Result<rusqlite::Transaction<'_>, IndexError> {
    c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(storage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conforms_in_memory() {
        let index = SqliteIndex::open_in_memory().unwrap();
        crate::index::conformance::run_all(&index).await;
        crate::index::conformance::run_operation_log(&index).await;
        crate::index::conformance::run_replica_registry(&index).await;
    }

    #[tokio::test]
    async fn conforms_on_disk_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/index.db");
        let index = SqliteIndex::open(&path).unwrap();
        crate::index::conformance::run_all(&index).await;
        crate::index::conformance::run_operation_log(&index).await;
        crate::index::conformance::run_replica_registry(&index).await;
        drop(index);
        let reopened = SqliteIndex::open(&path).unwrap();
        assert!(reopened.get_operation("l4").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn an_index_file_of_the_first_release_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            // The schema as the first release created it.
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE records (directory_bucket TEXT NOT NULL, key TEXT NOT NULL,
                     source_bucket TEXT, source_key TEXT, source_etag TEXT, size INTEGER,
                     source_last_modified INTEGER, dest_etag TEXT, cached_at INTEGER,
                     claim_owner TEXT, claim_kind TEXT, claim_deadline INTEGER,
                     PRIMARY KEY (directory_bucket, key)) WITHOUT ROWID;
                 CREATE TABLE leases (directory_bucket TEXT NOT NULL, prefix TEXT NOT NULL,
                     source_bucket TEXT NOT NULL, expires_at INTEGER NOT NULL,
                     PRIMARY KEY (directory_bucket, prefix, source_bucket)) WITHOUT ROWID;
                 CREATE TABLE operations (id TEXT PRIMARY KEY, request_id TEXT UNIQUE,
                     request BLOB NOT NULL, progress BLOB NOT NULL,
                     done INTEGER NOT NULL DEFAULT 0, resumptions INTEGER NOT NULL DEFAULT 0,
                     created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
                 INSERT INTO leases VALUES ('d--use1-az4--x-s3', 'old/', 'src', 1000);
                 INSERT INTO records (directory_bucket, key, source_bucket, source_key,
                     source_etag, size, dest_etag, cached_at)
                     VALUES ('d--use1-az4--x-s3', 'old/k', 'src', 'old/k', '\"e\"', 1, '\"d\"', 1);",
            )
            .unwrap();
            // Operations as the wire messages, prost-encoded; and one that
            // cannot be read at all.
            use expresscache::proto::v1 as pb;
            use prost::Message;
            let request = pb::WarmCacheRequest {
                bucket: "src".into(),
                prefixes: vec!["old/".into()],
                directory_bucket: "d--use1-az4--x-s3".into(),
                ttl: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
                ..Default::default()
            };
            let progress = pb::WarmProgress {
                operation_id: "op-old".into(),
                phase: pb::Phase::Copying as i32,
                counters: Some(pb::Counters {
                    objects_copied: 7,
                    ..Default::default()
                }),
                ..Default::default()
            };
            c.execute(
                "INSERT INTO operations (id, request, progress, created_at, updated_at)
                 VALUES ('op-old', ?1, ?2, 1, 1), ('op-garbled', x'', x'', 1, 1)",
                params![request.encode_to_vec(), progress.encode_to_vec()],
            )
            .unwrap();
        }
        let index = SqliteIndex::open(&path).unwrap();
        let dir_bucket = "d--use1-az4--x-s3";
        let rec = &index
            .records(dir_bucket, &KeyRange::prefix("old/"), 10)
            .await
            .unwrap()[0];
        assert!(rec.entry.is_some() && !rec.unconfirmed, "entries survive");
        let old = &index.covering_leases(dir_bucket, "old/", 0).await.unwrap()[0];
        assert_eq!(old.epoch, "v0", "existing leases get the constant epoch");
        let fresh = index
            .extend_lease(&Lease::new(dir_bucket, "new/", "src", 5000), 0)
            .await
            .unwrap();
        let fresh2 = index
            .extend_lease(&Lease::new(dir_bucket, "new2/", "src", 5000), 0)
            .await
            .unwrap();
        assert!(
            fresh.epoch != "v0" && fresh.epoch != fresh2.epoch,
            "new leases get their own epochs, not the column's default"
        );
        let revived = index
            .extend_lease(&Lease::new(dir_bucket, "old/", "src", 9000), 2000)
            .await
            .unwrap();
        assert_ne!(revived.epoch, "v0", "an expired old lease revived is new");
        let op = index.get_operation("op-old").await.unwrap().unwrap();
        assert_eq!(
            (op.request.source.as_str(), op.request.ttl.as_secs()),
            ("src", 60),
            "the request is rewritten in the versioned encoding"
        );
        assert_eq!(op.state.counters.objects_copied, 7);
        assert!(!op.is_done());
        assert!(
            index.get_operation("op-garbled").await.unwrap().is_none(),
            "an unreadable record is not returned, so it cannot fail every read"
        );
        assert!(
            index
                .list_operations(OpFilter::All, None, 10)
                .await
                .unwrap()
                .iter()
                .all(|o| o.id != "op-garbled"),
            "nor listed"
        );
        let kept: i64 = index
            .with(|c| {
                c.query_row(
                    "SELECT encoding FROM operations WHERE id = 'op-garbled'",
                    [],
                    |r| r.get(0),
                )
                .map_err(storage)
            })
            .await
            .unwrap();
        assert_eq!(kept, -1, "but kept, set aside, not deleted");
        let run = super::super::RunTerms {
            replica: "r",
            deadline: 10,
            now: 0,
        };
        assert_eq!(
            index
                .take_over("op-old", &run)
                .await
                .unwrap()
                .map(|t| t.crashes),
            Some(1),
            "an unfinished operation of the old release can be resumed and counted"
        );
        drop(index);
        // Opening again finds nothing left to migrate.
        let again = SqliteIndex::open(&path).unwrap();
        assert_eq!(
            again.covering_leases(dir_bucket, "new/", 0).await.unwrap()[0].epoch,
            fresh.epoch
        );
    }

    #[test]
    fn ancestors_of_a_prefix() {
        assert_eq!(ancestors(""), [""]);
        assert_eq!(ancestors("a/b/"), ["", "a/", "a/b/"]);
    }
}
