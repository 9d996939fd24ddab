//! The embedded [`CacheIndex`](super::CacheIndex): one SQLite file, WAL mode.
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

const RECORD_COLUMNS: &str = "directory_bucket, key, source_bucket, source_key, source_etag, size,
    source_last_modified, dest_etag, cached_at, claim_owner, claim_kind, claim_deadline,
    unconfirmed";

fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
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

/// A transaction that takes the write lock at once (IMMEDIATE). Every
/// transaction here reads and then writes; a deferred one that must
/// upgrade its lock while another connection (another server process on
/// the same file) writes fails with SQLITE_BUSY at once, without waiting
/// out the busy timeout.
fn write_tx(c: &mut Connection) -> Result<rusqlite::Transaction<'_>, IndexError> {
    c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(storage)
}

const COPY: &str = "copy";
const EVICT: &str = "evict";

fn read_record(c: &Connection, bucket: &str, key: &str) -> Result<Option<Record>, IndexError> {
    c.prepare_cached(&format!(
        "SELECT {RECORD_COLUMNS} FROM records WHERE directory_bucket = ?1 AND key = ?2"
    ))
    .map_err(storage)?
    .query_row(params![bucket, key], row_to_record)
    .optional()
    .map_err(storage)
}

/// Drops `owner`'s claim on `key`, and the record with it if nothing is
/// cached there.
fn drop_claim(c: &Connection, bucket: &str, key: &str, owner: &str) -> Result<(), IndexError> {
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

const LEASE_COLUMNS: &str = "directory_bucket, prefix, source_bucket, expires_at, epoch";

fn row_to_lease(r: &rusqlite::Row<'_>) -> rusqlite::Result<Lease> {
    Ok(Lease {
        directory_bucket: r.get(0)?,
        prefix: r.get(1)?,
        source_bucket: r.get(2)?,
        expires_at: r.get(3)?,
        epoch: r.get(4)?,
    })
}

fn row_to_sweep_failure(r: &rusqlite::Row<'_>) -> rusqlite::Result<SweepFailure> {
    Ok(SweepFailure {
        lease: row_to_lease(r)?,
        attempts: u32::try_from(r.get::<_, i64>(5)?).unwrap_or(u32::MAX),
        error: r.get::<_, Option<String>>(6)?.unwrap_or_default(),
        retry_at: r.get(7)?,
    })
}

/// An operations row as read: (id, request_id, request, state,
/// created_at, resumptions) and its run lease (replica, attempt, deadline,
/// cancel_requested).
struct OpRow {
    id: String,
    request_id: Option<String>,
    request: String,
    state: String,
    created_at: Millis,
    resumptions: i64,
    run_replica: Option<String>,
    run_attempt: i64,
    run_deadline: Millis,
    cancel_requested: bool,
    joinable: bool,
}

fn decode_op(row: OpRow) -> Result<OperationRecord, IndexError> {
    let id = row.id;
    let corrupt = |e: IndexError| IndexError::Corrupt(format!("operation {id}: {e}"));
    let state = encoding::state_from_json(&row.state).map_err(corrupt)?;
    let run = row
        .run_replica
        .filter(|_| !state.is_done())
        .map(|replica| RunLease {
            ticket: RunTicket {
                replica,
                attempt: u32::try_from(row.run_attempt).unwrap_or(0),
            },
            deadline: row.run_deadline,
            cancel_requested: row.cancel_requested,
            joinable: row.joinable,
        });
    let (request, owner) = encoding::request_and_owner_from_json(&row.request).map_err(corrupt)?;
    Ok(OperationRecord {
        request,
        owner,
        state,
        id,
        request_id: row.request_id,
        created_at: row.created_at,
        resumptions: u32::try_from(row.resumptions).unwrap_or(0),
        run,
    })
}

fn read_op(row: &rusqlite::Row<'_>) -> rusqlite::Result<OpRow> {
    Ok(OpRow {
        id: row.get(0)?,
        request_id: row.get(1)?,
        request: row.get(2)?,
        state: row.get(3)?,
        created_at: row.get(4)?,
        resumptions: row.get(5)?,
        run_replica: row.get(6)?,
        run_attempt: row.get(7)?,
        run_deadline: row.get(8)?,
        cancel_requested: row.get(9)?,
        joinable: {
            let (offered, withdrawn): (i64, i64) = (row.get(10)?, row.get(11)?);
            let attempt: i64 = row.get(7)?;
            offered > 0 && offered == attempt && withdrawn < offered
        },
    })
}

const OP_COLUMNS: &str = "id, request_id, request, progress, created_at, resumptions,
    run_replica, run_attempt, run_deadline, cancel_requested, offered_attempt, withdrawn_attempt";

fn insert_op(c: &Connection, op: &OperationRecord) -> Result<(), IndexError> {
    let run = op.run.as_ref();
    c.execute(
        "INSERT INTO operations (id, request_id, request, progress, done, resumptions,
             created_at, updated_at, encoding, run_replica, run_attempt, run_deadline,
             cancel_requested)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, 1, ?8, ?9, ?10, ?11)",
        params![
            op.id,
            op.request_id,
            encoding::record_request_json(op),
            encoding::state_json(&op.state),
            op.is_done(),
            op.resumptions,
            op.created_at,
            run.map(|r| r.ticket.replica.as_str()),
            run.map_or(0, |r| r.ticket.attempt),
            run.map_or(0, |r| r.deadline),
            run.is_some_and(|r| r.cancel_requested),
        ],
    )
    .map_err(storage)?;
    Ok(())
}

/// Stores an operation's state if `ticket` still holds its run (fencing);
/// a Done state ends the run. False, writing nothing, otherwise.
fn store_state(
    c: &Connection,
    id: &str,
    ticket: &RunTicket,
    doc: &str,
    done: bool,
    now: Millis,
) -> Result<bool, IndexError> {
    let changed = c
        .execute(
            "UPDATE operations SET progress = ?2, done = ?3, updated_at = ?4,
                 run_deadline = CASE WHEN ?3 THEN 0 ELSE run_deadline END
             WHERE id = ?1 AND done = 0 AND run_replica = ?5 AND run_attempt = ?6",
            params![id, doc, done, now, ticket.replica, ticket.attempt],
        )
        .map_err(storage)?;
    Ok(changed > 0)
}

/// The lease epochs recorded for operation `id`, replaced by `epochs`.
fn replace_lease_epochs(
    c: &Connection,
    id: &str,
    epochs: &[(String, String)],
) -> Result<(), IndexError> {
    c.execute("DELETE FROM operation_leases WHERE id = ?1", params![id])
        .map_err(storage)?;
    let mut stmt = c
        .prepare_cached("INSERT INTO operation_leases (id, prefix, epoch) VALUES (?1, ?2, ?3)")
        .map_err(storage)?;
    for (prefix, epoch) in epochs {
        stmt.execute(params![id, prefix, epoch]).map_err(storage)?;
    }
    Ok(())
}

/// [`Leases::extend_lease`](super::Leases::extend_lease) on an open connection (or transaction).
fn extend_lease_on(c: &Connection, lease: &Lease, now: Millis) -> Result<Lease, IndexError> {
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
fn create_or_extend_lease(c: &Connection, lease: &Lease, now: Millis) -> Result<Lease, IndexError> {
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
fn ended_lease(c: &Connection, lease: &Lease, now: Millis) -> Result<Lease, IndexError> {
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

#[async_trait::async_trait]
impl OperationLog for SqliteIndex {
    async fn create_operation(&self, op: &OperationRecord) -> Result<CreateOutcome, IndexError> {
        let op = op.clone();
        self.with(move |c| {
            let tx = write_tx(c)?;
            if let Some(rid) = &op.request_id {
                let existing = tx
                    .query_row(
                        &format!(
                            "SELECT {OP_COLUMNS} FROM operations
                             WHERE request_id = ?1 AND encoding = 1"
                        ),
                        params![rid],
                        read_op,
                    )
                    .optional()
                    .map_err(storage)?;
                if let Some(row) = existing {
                    return Ok(CreateOutcome::Exists(Box::new(decode_op(row)?)));
                }
            }
            insert_op(&tx, &op)?;
            tx.commit().map_err(storage)?;
            Ok(CreateOutcome::Created)
        })
        .await
    }

    async fn supersede_operation(
        &self,
        old_id: &str,
        op: &OperationRecord,
    ) -> Result<bool, IndexError> {
        let (old_id, op) = (old_id.to_owned(), op.clone());
        self.with(move |c| {
            let tx = write_tx(c)?;
            let moved = tx
                .execute(
                    "UPDATE operations SET request_id = NULL
                     WHERE id = ?1 AND request_id = ?2 AND done = 1",
                    params![old_id, op.request_id],
                )
                .map_err(storage)?;
            if moved == 0 {
                return Ok(false);
            }
            insert_op(&tx, &op)?;
            tx.commit().map_err(storage)?;
            Ok(true)
        })
        .await
    }

    async fn update_operation(
        &self,
        id: &str,
        ticket: &RunTicket,
        state: &OperationState,
    ) -> Result<bool, IndexError> {
        let (id, ticket) = (id.to_owned(), ticket.clone());
        let doc = encoding::state_json(state);
        let done = state.is_done();
        let now = self.clock.now();
        self.with(move |c| store_state(c, &id, &ticket, &doc, done, now))
            .await
    }

    async fn finish_operation(
        &self,
        id: &str,
        ticket: &RunTicket,
        state: &OperationState,
        epochs: &[(String, String)],
    ) -> Result<bool, IndexError> {
        let (id, ticket, epochs) = (id.to_owned(), ticket.clone(), epochs.to_vec());
        let doc = encoding::state_json(state);
        let done = state.is_done();
        let now = self.clock.now();
        self.with(move |c| {
            let tx = write_tx(c)?;
            if !store_state(&tx, &id, &ticket, &doc, done, now)? {
                return Ok(false);
            }
            replace_lease_epochs(&tx, &id, &epochs)?;
            tx.commit().map_err(storage)?;
            Ok(true)
        })
        .await
    }

    async fn get_operation(&self, id: &str) -> Result<Option<OperationRecord>, IndexError> {
        let id = id.to_owned();
        self.with(move |c| {
            let row = c
                .query_row(
                    &format!("SELECT {OP_COLUMNS} FROM operations WHERE id = ?1 AND encoding = 1"),
                    params![id],
                    read_op,
                )
                .optional()
                .map_err(storage)?;
            row.map(decode_op).transpose()
        })
        .await
    }

    async fn list_operations(
        &self,
        filter: OpFilter,
        after: Option<(Millis, String)>,
        limit: usize,
    ) -> Result<Vec<OperationRecord>, IndexError> {
        let done: Option<bool> = match filter {
            OpFilter::All => None,
            OpFilter::Running => Some(false),
            OpFilter::Finished => Some(true),
        };
        let (at, id) = after.map_or((None, None), |(t, i)| (Some(t), Some(i)));
        let limit = to_i64(limit as u64);
        self.with(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {OP_COLUMNS} FROM operations
                     WHERE encoding = 1 AND (?1 IS NULL OR done = ?1)
                       AND (?2 IS NULL OR created_at < ?2 OR (created_at = ?2 AND id < ?3))
                     ORDER BY created_at DESC, id DESC LIMIT ?4"
                ))
                .map_err(storage)?;
            let rows = stmt
                .query_map(params![done, at, id, limit], read_op)
                .map_err(storage)?;
            rows.map(|r| r.map_err(storage).and_then(decode_op))
                .collect()
        })
        .await
    }

    async fn set_lease_epochs(
        &self,
        id: &str,
        epochs: &[(String, String)],
    ) -> Result<(), IndexError> {
        let (id, epochs) = (id.to_owned(), epochs.to_vec());
        self.with(move |c| {
            let tx = write_tx(c)?;
            replace_lease_epochs(&tx, &id, &epochs)?;
            tx.commit().map_err(storage)
        })
        .await
    }

    async fn lease_epochs(&self, id: &str) -> Result<Vec<(String, String)>, IndexError> {
        let id = id.to_owned();
        self.with(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT prefix, epoch FROM operation_leases WHERE id = ?1 ORDER BY prefix",
                )
                .map_err(storage)?;
            let rows = stmt
                .query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(storage)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(storage)
        })
        .await
    }

    async fn purge_operations(&self, before: Millis) -> Result<u64, IndexError> {
        self.with(move |c| {
            let n = c
                .execute(
                    "DELETE FROM operations WHERE done = 1 AND updated_at < ?1",
                    params![before],
                )
                .map_err(storage)?;
            c.execute(
                "DELETE FROM operation_leases WHERE id NOT IN (SELECT id FROM operations)",
                [],
            )
            .map_err(storage)?;
            Ok(n as u64)
        })
        .await
    }
}

#[async_trait::async_trait]
impl RunLeases for SqliteIndex {
    async fn take_over(
        &self,
        id: &str,
        terms: &RunTerms<'_>,
    ) -> Result<Option<Takeover>, IndexError> {
        let (id, replica) = (id.to_owned(), terms.replica.to_owned());
        let (deadline, now) = (terms.deadline, terms.now);
        self.with(move |c| {
            c.query_row(
                "UPDATE operations SET run_replica = ?2, run_attempt = run_attempt + 1,
                     run_deadline = ?3, crashes = crashes + 1 - clean_stop, clean_stop = 0
                 WHERE id = ?1 AND done = 0 AND (run_replica IS NULL OR run_deadline <= ?4)
                 RETURNING run_attempt, crashes, cancel_requested",
                params![id, replica, deadline, now],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, bool>(2)?,
                    ))
                },
            )
            .optional()
            .map_err(storage)
            .map(|row| {
                row.map(|(attempt, crashes, cancel_requested)| Takeover {
                    ticket: RunTicket {
                        replica,
                        attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
                    },
                    crashes: u32::try_from(crashes).unwrap_or(u32::MAX),
                    cancel_requested,
                })
            })
        })
        .await
    }

    async fn renew_run(
        &self,
        id: &str,
        ticket: &RunTicket,
        deadline: Millis,
    ) -> Result<Renewal, IndexError> {
        let (id, ticket) = (id.to_owned(), ticket.clone());
        self.with(move |c| {
            let cancel: Option<bool> = c
                .query_row(
                    // run_deadline > 0: a released run stays released, even
                    // if a renewal sent before the release lands after it.
                    "UPDATE operations SET run_deadline = max(run_deadline, ?4)
                     WHERE id = ?1 AND done = 0 AND run_replica = ?2 AND run_attempt = ?3
                       AND run_deadline > 0
                     RETURNING cancel_requested",
                    params![id, ticket.replica, ticket.attempt, deadline],
                    |r| r.get(0),
                )
                .optional()
                .map_err(storage)?;
            Ok(
                cancel.map_or(Renewal::Lost, |cancel_requested| Renewal::Held {
                    cancel_requested,
                }),
            )
        })
        .await
    }

    async fn release_run(&self, id: &str, ticket: &RunTicket) -> Result<(), IndexError> {
        let (id, ticket) = (id.to_owned(), ticket.clone());
        self.with(move |c| {
            c.execute(
                "UPDATE operations SET run_deadline = 0, clean_stop = 1
                 WHERE id = ?1 AND done = 0 AND run_replica = ?2 AND run_attempt = ?3",
                params![id, ticket.replica, ticket.attempt],
            )
            .map_err(storage)?;
            Ok(())
        })
        .await
    }

    async fn request_cancel(&self, id: &str) -> Result<bool, IndexError> {
        let id = id.to_owned();
        self.with(move |c| {
            let n = c
                .execute(
                    "UPDATE operations SET cancel_requested = 1 WHERE id = ?1 AND done = 0",
                    params![id],
                )
                .map_err(storage)?;
            Ok(n > 0)
        })
        .await
    }

    async fn mark_resumed(&self, id: &str) -> Result<u32, IndexError> {
        let id = id.to_owned();
        self.with(move |c| {
            let n: i64 = c
                .query_row(
                    "UPDATE operations SET resumptions = resumptions + 1 WHERE id = ?1
                     RETURNING resumptions",
                    params![id],
                    |r| r.get(0),
                )
                .map_err(storage)?;
            Ok(u32::try_from(n).unwrap_or(u32::MAX))
        })
        .await
    }

    async fn offer_join(&self, id: &str, ticket: &RunTicket) -> Result<bool, IndexError> {
        let (id, ticket) = (id.to_owned(), ticket.clone());
        self.with(move |c| {
            let changed = c
                .execute(
                    "UPDATE operations SET offered_attempt = ?3
                     WHERE id = ?1 AND done = 0 AND run_replica = ?2 AND run_attempt = ?3
                       AND withdrawn_attempt < ?3",
                    params![id, ticket.replica, ticket.attempt],
                )
                .map_err(storage)?;
            Ok(changed > 0)
        })
        .await
    }

    async fn withdraw_join(&self, id: &str, ticket: &RunTicket) -> Result<bool, IndexError> {
        let (id, ticket) = (id.to_owned(), ticket.clone());
        self.with(move |c| {
            let changed = c
                .execute(
                    "UPDATE operations SET withdrawn_attempt = max(withdrawn_attempt, ?3)
                     WHERE id = ?1 AND run_replica = ?2 AND run_attempt = ?3",
                    params![id, ticket.replica, ticket.attempt],
                )
                .map_err(storage)?;
            Ok(changed > 0)
        })
        .await
    }
}

#[async_trait::async_trait]
impl ReplicaRegistry for SqliteIndex {
    async fn heartbeat(&self, replica: &str, deadline: Millis) -> Result<(), IndexError> {
        let replica = replica.to_owned();
        self.with(move |c| {
            c.execute(
                "INSERT INTO replicas (id, deadline) VALUES (?1, ?2)
                 ON CONFLICT DO UPDATE SET deadline = max(deadline, excluded.deadline)",
                params![replica, deadline],
            )
            .map_err(storage)?;
            Ok(())
        })
        .await
    }

    async fn live_replicas(&self, now: Millis) -> Result<Vec<String>, IndexError> {
        self.with(move |c| {
            let mut stmt = c
                .prepare_cached("SELECT id FROM replicas WHERE deadline > ?1 ORDER BY id")
                .map_err(storage)?;
            let rows = stmt
                .query_map(params![now], |r| r.get(0))
                .map_err(storage)?;
            rows.collect::<Result<Vec<String>, _>>().map_err(storage)
        })
        .await
    }

    async fn leave(&self, replica: &str) -> Result<(), IndexError> {
        let replica = replica.to_owned();
        self.with(move |c| {
            c.execute("DELETE FROM replicas WHERE id = ?1", params![replica])
                .map_err(storage)?;
            Ok(())
        })
        .await
    }
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
