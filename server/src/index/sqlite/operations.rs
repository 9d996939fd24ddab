//! The operation log: operations as versioned documents, by id and
//! request id, listed, checkpointed, finished, purged.

use super::*;

/// An operations row as read: (id, request_id, request, state,
/// created_at, resumptions) and its run lease (replica, attempt, deadline,
/// cancel_requested).
pub(super) struct OpRow {
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

pub(super) fn decode_op(row: OpRow) -> Result<OperationRecord, IndexError> {
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

pub(super) fn read_op(row: &rusqlite::Row<'_>) -> rusqlite::Result<OpRow> {
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

pub(super) const OP_COLUMNS: &str = "id, request_id, request, progress, created_at, resumptions,
    run_replica, run_attempt, run_deadline, cancel_requested, offered_attempt, withdrawn_attempt";

pub(super) fn insert_op(c: &Connection, op: &OperationRecord) -> Result<(), IndexError> {
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
pub(super) fn store_state(
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
pub(super) fn replace_lease_epochs(
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
