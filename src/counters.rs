//! What a warm has done so far: one type for the server's records and the
//! client's reports, converted to and from the wire in one place.

use crate::proto::v1 as pb;

/// What a warm has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Objects found under the prefixes in the source.
    pub objects_listed: u64,
    /// Objects already cached and current: not copied.
    pub objects_hit: u64,
    /// Objects the plan decided to copy (so far, while listing goes on).
    pub objects_to_copy: u64,
    /// Objects copied by this warm.
    pub objects_copied: u64,
    /// Objects that could not be copied.
    pub objects_failed: u64,
    /// Objects another warm was copying: waited for, not copied again.
    pub objects_shared: u64,
    /// Bytes of all objects listed.
    pub bytes_listed: u64,
    /// Bytes of the objects the plan decided to copy (so far).
    pub bytes_to_copy: u64,
    /// Bytes copied so far.
    pub bytes_copied: u64,
    /// Requests retried after a retryable error.
    pub copy_retries: u64,
    /// Of those, throttling answers (503 SlowDown, 429, timeouts).
    pub throttle_events: u64,
}

impl Counters {
    /// Adds `other`'s counts to these (a warm's own work and the part
    /// another warm did for it, shown as one).
    pub fn add(&mut self, other: &Self) {
        for (mine, theirs) in [
            (&mut self.objects_listed, other.objects_listed),
            (&mut self.objects_hit, other.objects_hit),
            (&mut self.objects_to_copy, other.objects_to_copy),
            (&mut self.objects_copied, other.objects_copied),
            (&mut self.objects_failed, other.objects_failed),
            (&mut self.objects_shared, other.objects_shared),
            (&mut self.bytes_listed, other.bytes_listed),
            (&mut self.bytes_to_copy, other.bytes_to_copy),
            (&mut self.bytes_copied, other.bytes_copied),
            (&mut self.copy_retries, other.copy_retries),
            (&mut self.throttle_events, other.throttle_events),
        ] {
            *mine = mine.saturating_add(theirs);
        }
    }
}

impl From<&pb::Counters> for Counters {
    fn from(c: &pb::Counters) -> Self {
        Self {
            objects_listed: c.objects_listed,
            objects_hit: c.objects_hit,
            objects_to_copy: c.objects_to_copy,
            objects_copied: c.objects_copied,
            objects_failed: c.objects_failed,
            objects_shared: c.objects_shared,
            bytes_listed: c.bytes_listed,
            bytes_to_copy: c.bytes_to_copy,
            bytes_copied: c.bytes_copied,
            copy_retries: c.copy_retries,
            throttle_events: c.throttle_events,
        }
    }
}

impl From<&Counters> for pb::Counters {
    fn from(c: &Counters) -> Self {
        Self {
            objects_listed: c.objects_listed,
            objects_hit: c.objects_hit,
            objects_to_copy: c.objects_to_copy,
            objects_copied: c.objects_copied,
            objects_failed: c.objects_failed,
            bytes_copied: c.bytes_copied,
            bytes_to_copy: c.bytes_to_copy,
            bytes_listed: c.bytes_listed,
            objects_shared: c.objects_shared,
            copy_retries: c.copy_retries,
            throttle_events: c.throttle_events,
        }
    }
}
