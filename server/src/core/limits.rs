//! S3's limits that the engine, the configuration and the planner obey,
//! written once (the S3 API reference, "Amazon S3 multipart upload
//! limits" and the CopyObject, ListObjectsV2 and DeleteObjects pages).

/// The largest object one CopyObject copies (and so one Batch Operations
/// copy job): larger ones are copied in parts.
pub const MAX_COPY_OBJECT: u64 = 5 * 1024 * 1024 * 1024;

/// The smallest part of a multipart upload, except the last.
pub const MIN_PART: u64 = 5 * 1024 * 1024;

/// The most parts one multipart upload holds.
pub const MAX_PARTS: u64 = 10_000;

/// The most keys one ListObjectsV2 page or one DeleteObjects call holds.
pub const KEYS_PER_REQUEST: usize = 1000;

/// The longest object key, in UTF-8 bytes (the client validates prefixes
/// against the same number).
pub use expresscache::names::MAX_KEY_BYTES;
