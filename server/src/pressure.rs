//! Backpressure from the index to the copy engine. Every copy ends in
//! index writes (its entry, its claim): when the index is found busy
//! (DynamoDB throttling or not answering), copying faster only queues more
//! writes behind it. The index notes each busy answer here; the engine
//! cuts the limit of the bucket it copies to, as for S3's SlowDown, so a
//! cold warm runs at what the table gives instead of failing.

use std::sync::atomic::{AtomicU64, Ordering};

static INDEX_BUSY: AtomicU64 = AtomicU64::new(0);

/// Notes that the index answered busy once.
pub fn note_index_busy() {
    INDEX_BUSY.fetch_add(1, Ordering::Relaxed);
}

/// Busy answers so far (a counter that only grows).
pub fn index_busy_count() -> u64 {
    INDEX_BUSY.load(Ordering::Relaxed)
}
