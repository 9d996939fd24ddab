//! One writer of leases per replica. A job array sends the same warm from
//! hundreds of launchers at once; each joiner writes the same lease items,
//! and a table serves one item only so many writes a second (DynamoDB:
//! 1,000 write units per partition). Here concurrent writes of the same
//! leases are merged: while one index call is under way, every caller that
//! arrives waits for the next, which asks for the latest expiry any of them
//! needs and answers them all. So one lease costs at most one write in
//! flight per replica, however large the herd, and each caller's answer
//! comes from a write issued after it asked (what it checks is current).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::core::clock::Clock;
use crate::index::{CacheIndex, IndexError, Lease, Millis};

/// Expiries are rounded up to this: identical requests within it ask for
/// the same expiry, so their writes (from any replica) find nothing to
/// extend and move no index key.
const EXPIRY_GRAIN_MS: Millis = 1000;

/// `at` rounded up to the grain: never earlier than asked.
pub fn coarsen(at: Millis) -> Millis {
    at.saturating_add(EXPIRY_GRAIN_MS - 1) / EXPIRY_GRAIN_MS * EXPIRY_GRAIN_MS
}

/// What identifies leases that can be written together: the same items
/// with the same epochs (a warm that knows its epochs extends only those).
type GroupKey = Vec<(String, String, String, String)>;

type Answer = oneshot::Sender<Result<Vec<Lease>, IndexError>>;

/// Callers waiting for the next write of one group, and whether a writer
/// is at work on it.
#[derive(Default)]
struct Group {
    waiting: Vec<(Vec<Millis>, Answer)>,
    writing: bool,
}

#[derive(Default)]
pub struct LeaseWriter {
    groups: Arc<Mutex<HashMap<GroupKey, Group>>>,
}

impl std::fmt::Debug for LeaseWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseWriter").finish_non_exhaustive()
    }
}

impl LeaseWriter {
    /// [`Leases::extend_leases`](crate::index::Leases::extend_leases) of `leases`, merged with concurrent
    /// calls for the same leases.
    pub async fn extend(
        &self,
        index: &Arc<dyn CacheIndex>,
        clock: &Arc<dyn Clock>,
        leases: Vec<Lease>,
    ) -> Result<Vec<Lease>, IndexError> {
        let key: GroupKey = leases
            .iter()
            .map(|l| {
                (
                    l.directory_bucket.clone(),
                    l.prefix.clone(),
                    l.source_bucket.clone(),
                    l.epoch.clone(),
                )
            })
            .collect();
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
            let group = groups.entry(key.clone()).or_default();
            group
                .waiting
                .push((leases.iter().map(|l| l.expires_at).collect(), tx));
            !std::mem::replace(&mut group.writing, true)
        };
        if start {
            // A task of its own: a caller that gives up must not leave the
            // others waiting on a write nobody makes.
            tokio::spawn(write_group(
                Arc::clone(&self.groups),
                key,
                leases,
                Arc::clone(index),
                Arc::clone(clock),
            ));
        }
        rx.await.unwrap_or_else(|_| {
            Err(IndexError::Unavailable(
                "the lease write was abandoned".into(),
            ))
        })
    }
}

/// Writes `group`'s leases until nobody waits: each round takes every
/// caller waiting at its start, asks for the latest expiry each lease
/// needs, and answers them all.
async fn write_group(
    groups: Arc<Mutex<HashMap<GroupKey, Group>>>,
    key: GroupKey,
    mut leases: Vec<Lease>,
    index: Arc<dyn CacheIndex>,
    clock: Arc<dyn Clock>,
) {
    // However this task ends (a panic, the runtime shutting down), the
    // group goes with it: its waiting callers' answers are dropped (they
    // see the write abandoned) and the next caller starts a new writer.
    let _forget = Forget(Arc::clone(&groups), key.clone());
    loop {
        let waiting = {
            let mut all = groups.lock().unwrap_or_else(|e| e.into_inner());
            let Some(group) = all.get_mut(&key) else {
                return;
            };
            if group.waiting.is_empty() {
                all.remove(&key);
                return;
            }
            std::mem::take(&mut group.waiting)
        };
        for (i, lease) in leases.iter_mut().enumerate() {
            lease.expires_at = waiting
                .iter()
                .filter_map(|(asked, _)| asked.get(i).copied())
                .max()
                .unwrap_or(lease.expires_at);
        }
        let result = index.extend_leases(&leases, clock.now()).await;
        for (_, answer) in waiting {
            let _ = answer.send(result.clone());
        }
    }
}

/// Removes a group from the map when dropped.
struct Forget(Arc<Mutex<HashMap<GroupKey, Group>>>, GroupKey);

impl Drop for Forget {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::SqliteIndex;

    #[test]
    fn expiries_are_rounded_up_never_down() {
        assert_eq!(coarsen(1_000), 1_000);
        assert_eq!(coarsen(1_001), 2_000);
        assert_eq!(coarsen(1_999), 2_000);
        assert_eq!(coarsen(0), 0);
    }

    #[tokio::test]
    async fn a_herd_writing_the_same_lease_costs_a_few_writes_and_each_gets_its_expiry() {
        let index = Arc::new(crate::index::CountingIndex::new(
            SqliteIndex::open_in_memory().unwrap(),
        ));
        let clock: Arc<dyn Clock> = Arc::new(crate::core::clock::SystemClock);
        let now = clock.now();
        let writer = Arc::new(LeaseWriter::default());
        let calls = (0..200).map(|i| {
            let (writer, index, clock) =
                (Arc::clone(&writer), Arc::clone(&index), Arc::clone(&clock));
            async move {
                let asked = now + 60_000 + i;
                let lease = Lease::new("dir--use1-az4--x-s3", "d/", "src", asked);
                let index: Arc<dyn CacheIndex> = index;
                let stored = writer.extend(&index, &clock, vec![lease]).await.unwrap();
                assert!(stored[0].expires_at >= asked, "at least what it asked");
                stored[0].epoch.clone()
            }
        });
        let epochs = futures::future::join_all(calls).await;
        assert!(epochs.windows(2).all(|w| w[0] == w[1]), "one lease");
        let writes = index.writes();
        assert!(writes <= 3, "{writes} writes for 200 callers");
    }
}
