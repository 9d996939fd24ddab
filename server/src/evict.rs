//! Evict: end the leases of prefixes now and delete their cached objects.

use expresscache::proto::v1 as pb;
use expresscache::EvictSpec;

use crate::index::{CacheIndex, IndexError};
use crate::store::{ObjectStore, StoreError, DELETE_BATCH};

#[derive(Debug, thiserror::Error)]
pub enum EvictError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("deleting from {bucket}: {source}")]
    Store { bucket: String, source: StoreError },
}

/// Ends the leases at or under each prefix, then deletes every cached object
/// under it: from the directory bucket first, and from the index only once
/// S3 confirmed the delete, so a failed delete leaves an entry that a later
/// evict or sweep retries.
pub async fn evict<S: ObjectStore, I: CacheIndex>(
    store: &S,
    index: &I,
    spec: &EvictSpec,
) -> Result<pb::EvictResponse, EvictError> {
    let dir = spec.directory_bucket.as_str();
    let mut resp = pb::EvictResponse::default();
    for prefix in &spec.prefixes {
        resp.leases_ended += index.end_leases(dir, prefix.as_str()).await?;
    }
    for prefix in expresscache::request::minimal_cover(&spec.prefixes) {
        let mut after: Option<String> = None;
        loop {
            let page = index
                .entries(dir, prefix.as_str(), after.as_deref(), None, DELETE_BATCH)
                .await?;
            let Some(last) = page.last().map(|e| e.key.clone()) else {
                break;
            };
            let keys: Vec<String> = page.iter().map(|e| e.key.clone()).collect();
            let failures =
                store
                    .delete_objects(dir, &keys)
                    .await
                    .map_err(|source| EvictError::Store {
                        bucket: dir.to_owned(),
                        source,
                    })?;
            let failed: std::collections::HashSet<&str> =
                failures.iter().map(|f| f.key.as_str()).collect();
            let deleted: Vec<String> = page
                .iter()
                .filter(|e| !failed.contains(e.key.as_str()))
                .map(|e| {
                    resp.objects_deleted += 1;
                    resp.bytes_deleted += e.size;
                    e.key.clone()
                })
                .collect();
            index.delete_entries(dir, &deleted).await?;
            resp.failures
                .extend(failures.into_iter().map(|f| pb::KeyFailure {
                    key: f.key,
                    code: f.code,
                    message: f.message,
                }));
            after = Some(last);
        }
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{Entry, SqliteIndex};
    use crate::store::MemoryStore;
    use expresscache::{DirectoryBucketName, Prefix};

    #[tokio::test]
    async fn evict_removes_objects_and_entries_under_prefix_only() {
        let store = MemoryStore::default();
        let index = SqliteIndex::open_in_memory().unwrap();
        let dir = "cache--use1-az4--x-s3";
        store.create_bucket(dir);
        let mut entries = Vec::new();
        for k in ["a/1", "a/2", "b/1"] {
            let etag = store.put(dir, k, 10);
            entries.push(Entry {
                directory_bucket: dir.into(),
                key: k.into(),
                source_bucket: "src".into(),
                source_key: k.into(),
                source_etag: "\"s\"".into(),
                size: 10,
                source_last_modified: None,
                dest_etag: etag,
                cached_at: 0,
            });
        }
        index.put_entries(&entries).await.unwrap();
        let spec = EvictSpec {
            directory_bucket: DirectoryBucketName::parse(dir).unwrap(),
            prefixes: vec![Prefix::parse("a/").unwrap()],
        };
        let resp = evict(&store, &index, &spec).await.unwrap();
        assert_eq!((resp.objects_deleted, resp.bytes_deleted), (2, 20));
        assert_eq!(store.keys(dir), ["b/1"]);
        let left = index.entries(dir, "", None, None, 10).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].key, "b/1");
    }
}
