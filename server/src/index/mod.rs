//! `CacheIndex`: the service's record of what is cached, the leases that
//! keep it, and the operations that put it there.
//!
//! Every operation is expressed so it maps onto one conditional write or one
//! transaction of a key-value store (SQLite here; DynamoDB
//! `TransactWriteItems` later), and reads are key-ordered pages so the
//! planner can merge them with a source listing in bounded memory.

#[cfg(any(test, feature = "test-support"))]
pub mod conformance;
mod sqlite;

pub use sqlite::SqliteIndex;

use expresscache::proto::v1 as pb;

/// Milliseconds since the Unix epoch; the index's only notion of time.
pub type Millis = i64;

/// The current time in [`Millis`].
pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The index record of one cached object. Written only after its copy
/// succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub directory_bucket: String,
    /// Key in the directory bucket.
    pub key: String,
    pub source_bucket: String,
    pub source_key: String,
    /// ETag of the source version that was copied.
    pub source_etag: String,
    pub size: u64,
    pub source_last_modified: Option<Millis>,
    /// ETag the copy produced in the directory bucket.
    pub dest_etag: String,
    pub cached_at: Millis,
}

/// Keeps everything under `prefix` of `directory_bucket` cached until
/// `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub directory_bucket: String,
    pub prefix: String,
    pub source_bucket: String,
    pub expires_at: Millis,
}

/// A warm operation as the index keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct OperationRecord {
    pub id: String,
    pub request_id: Option<String>,
    pub request: pb::WarmCacheRequest,
    pub progress: pb::WarmProgress,
    pub created_at: Millis,
}

/// Result of registering an operation under an idempotency key.
#[derive(Debug, Clone, PartialEq)]
pub enum CreateOutcome {
    Created,
    /// Another operation already holds the request id.
    Exists(Box<OperationRecord>),
}

/// Objects and bytes recorded under a prefix.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub objects: u64,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    #[error("index storage error: {0}")]
    Storage(String),
    #[error("corrupt index record: {0}")]
    Corrupt(String),
}

/// The cache index.
#[async_trait::async_trait]
pub trait CacheIndex: Send + Sync + 'static {
    /// Sets the lease's expiry to max(stored, `lease.expires_at`) in one
    /// conditional step; returns the lease as stored.
    async fn extend_lease(&self, lease: &Lease) -> Result<Lease, IndexError>;

    /// Leases of `directory_bucket` live at `now` whose prefix covers
    /// `prefix` (the prefix itself and its ancestors), ordered by prefix.
    async fn covering_leases(
        &self,
        directory_bucket: &str,
        prefix: &str,
        now: Millis,
    ) -> Result<Vec<Lease>, IndexError>;

    /// Removes the leases at or under `prefix`; returns how many.
    async fn end_leases(&self, directory_bucket: &str, prefix: &str) -> Result<u64, IndexError>;

    /// Entries whose key starts with `prefix` and lies in (`after`, `upto`]
    /// (either bound open when `None`), in key order, at most `limit`.
    async fn entries(
        &self,
        directory_bucket: &str,
        prefix: &str,
        after: Option<&str>,
        upto: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Entry>, IndexError>;

    /// Inserts or replaces entries, atomically as a batch.
    async fn put_entries(&self, entries: &[Entry]) -> Result<(), IndexError>;

    /// Removes the entries for `keys`.
    async fn delete_entries(
        &self,
        directory_bucket: &str,
        keys: &[String],
    ) -> Result<(), IndexError>;

    /// Objects and bytes recorded under `prefix`.
    async fn usage(&self, directory_bucket: &str, prefix: &str) -> Result<Usage, IndexError>;

    /// Registers a new operation; if its request id is taken, returns the
    /// operation that holds it instead.
    async fn create_operation(&self, op: &OperationRecord) -> Result<CreateOutcome, IndexError>;

    /// Stores the latest progress of an operation.
    async fn update_operation(
        &self,
        id: &str,
        progress: &pb::WarmProgress,
    ) -> Result<(), IndexError>;

    async fn get_operation(&self, id: &str) -> Result<Option<OperationRecord>, IndexError>;
}

/// The smallest key greater than every key starting with `prefix`, if any:
/// the exclusive upper bound of a prefix range scan.
pub fn prefix_successor(prefix: &str) -> Option<String> {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0xff {
            bytes.push(last + 1);
            // Keys are UTF-8; bumping the final byte of a prefix that ends in
            // an ASCII '/' (all non-empty prefixes) stays valid UTF-8.
            return String::from_utf8(bytes).ok();
        }
    }
    None
}
