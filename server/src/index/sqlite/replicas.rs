//! The replica registry: heartbeats and deadlines.

use super::*;

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
