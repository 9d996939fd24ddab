//! Run leases: who runs an unfinished operation, fenced by attempt.

use super::*;

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

    async fn offered_operations(
        &self,
        limit: usize,
    ) -> Result<Vec<OperationRecord>, IndexError> {
        let limit = to_i64(limit as u64);
        self.with(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {cols} FROM operations
                     WHERE encoding = 1 AND done = 0 AND offered_attempt > 0
                       AND offered_attempt = run_attempt AND withdrawn_attempt < offered_attempt
                     ORDER BY created_at, id LIMIT ?1",
                    cols = operations::OP_COLUMNS
                ))
                .map_err(storage)?;
            let rows = stmt
                .query_map(params![limit], operations::read_op)
                .map_err(storage)?;
            rows.map(|r| r.map_err(storage).and_then(operations::decode_op))
                .collect()
        })
        .await
    }

    async fn unfinished_operations(
        &self,
        after: Option<(Millis, String)>,
        limit: usize,
    ) -> Result<Vec<(Millis, String)>, IndexError> {
        let (at, id) = after.map_or((None, None), |(t, i)| (Some(t), Some(i)));
        let limit = to_i64(limit as u64);
        self.with(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT created_at, id FROM operations
                     WHERE encoding = 1 AND done = 0
                       AND (?1 IS NULL OR created_at < ?1 OR (created_at = ?1 AND id < ?2))
                     ORDER BY created_at DESC, id DESC LIMIT ?3",
                )
                .map_err(storage)?;
            let rows = stmt
                .query_map(params![at, id, limit], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(storage)?;
            rows.map(|r| r.map_err(storage)).collect()
        })
        .await
    }
}
