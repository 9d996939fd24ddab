//! Which of a replica's index calls go first when its index paces its
//! requests (DynamoDB: `DynamoConfig::max_in_flight`). A job array's burst
//! is a thousand calls of bookkeeping, one per warm (creating it,
//! checkpointing a joiner, recording a joiner's final state), while the
//! few calls of the warm they all wait for (its reads of the records, its
//! claims, its own final state) serve every one of them: sent behind the
//! burst, those made a cached warm of the herd take 22 s where alone it
//! takes under one. A caller marks a call's lane around it; the SQLite
//! index, which sends nothing over a network, ignores lanes.

use std::future::Future;

/// How urgent an index call is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Keeps a run or this replica alive (renewals, the heartbeat): never
    /// waits for a slot; a late one hands a live run on.
    Urgent,
    /// A warm's work, and anything not marked: waits its turn.
    Work,
    /// Bookkeeping of one warm among many: waits its turn, and only so
    /// many of it at once, so work never queues behind a whole burst.
    Bulk,
}

tokio::task_local! {
    static LANE: Lane;
}

/// Runs `call` with its index calls in `lane`.
pub async fn in_lane<F: Future>(lane: Lane, call: F) -> F::Output {
    LANE.scope(lane, call).await
}

/// The lane of the index call being made now ([`Lane::Work`] unless marked).
pub fn current() -> Lane {
    LANE.try_with(|lane| *lane).unwrap_or(Lane::Work)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_innermost_lane_counts_and_work_is_the_default() {
        assert_eq!(current(), Lane::Work);
        let lanes = in_lane(Lane::Bulk, async {
            let inner = in_lane(Lane::Urgent, async { current() }).await;
            (current(), inner)
        })
        .await;
        assert_eq!(lanes, (Lane::Bulk, Lane::Urgent));
        assert_eq!(current(), Lane::Work);
    }
}
