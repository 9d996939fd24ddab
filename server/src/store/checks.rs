//! Buckets found to exist a moment ago: a job array's thousand identical
//! warms cost a few HeadBucket requests, not two thousand. One check per
//! bucket is in flight at a time (a burst waits for it rather than send
//! its own), and a failure is never remembered (a bucket just created must
//! work at once).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{ObjectStore, StoreError};

/// Buckets remembered at most: a server that met this many names starts
/// over.
const MAX_REMEMBERED: usize = 10_000;

/// When each bucket was last found to exist, each behind its own lock.
#[derive(Debug, Default)]
pub struct BucketChecks {
    seen: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Instant>>>>>,
}

impl BucketChecks {
    /// Checks through `store` that `bucket` exists and is reachable,
    /// unless it was found so within `ttl`.
    pub async fn check(
        &self,
        store: &dyn ObjectStore,
        bucket: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let now = Instant::now();
        let slot = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if seen.len() >= MAX_REMEMBERED {
                seen.clear();
            }
            Arc::clone(seen.entry(bucket.to_owned()).or_default())
        };
        let mut checked = slot.lock().await;
        if checked.is_some_and(|seen| now.duration_since(seen) < ttl) {
            return Ok(());
        }
        store.check_bucket(bucket).await?;
        *checked = Some(Instant::now());
        Ok(())
    }
}
