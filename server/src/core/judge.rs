//! Judging by this replica's clock what another clock wrote: a lease,
//! claim or run deadline is over only once it is past on every clock
//! within the skew margin of ours, and nothing is judged at all while this
//! clock is measured more than half the margin from S3's.

use std::time::{Duration, SystemTime};

use super::clock::{span_millis, Millis};

/// What one S3 `Date` header cannot tell apart: it has whole seconds.
const RESOLUTION_MS: i64 = 1000;

/// The clock skew margin (`--clock-skew-margin`) and the judgements made
/// with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Judge {
    margin: Duration,
}

impl Judge {
    pub fn new(margin: Duration) -> Self {
        Self { margin }
    }

    #[cfg(any(test, feature = "testing"))]
    pub fn margin(&self) -> Duration {
        self.margin
    }

    /// "Now" for deciding that a deadline another clock may have written
    /// has passed: `now` minus the margin, so nothing is taken over or
    /// deleted that a clock within the margin of ours still sees as live.
    pub fn settled(&self, now: Millis) -> Millis {
        now.saturating_sub(span_millis(self.margin))
    }

    /// [`settled`](Self::settled) for a wall-clock time, less one second
    /// more for S3's whole-second timestamps: an object S3 stamped before
    /// this was there before `t` on every clock within the margin.
    pub fn settled_stamp(&self, t: SystemTime) -> SystemTime {
        t.checked_sub(self.margin + Duration::from_secs(1))
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }

    /// Whether clock-judged deletions and takeovers may go ahead with this
    /// clock `offset` ms from S3's (local minus S3): not while it is more
    /// than half the margin (the other half is for the other replicas) by
    /// more than a `Date` header resolves, so a measurement's own error
    /// never stops a replica. The error says why, for logs and callers.
    pub fn fits(&self, offset: i64) -> Result<(), String> {
        let allowed = span_millis(self.margin) / 2 + RESOLUTION_MS;
        if offset.abs() <= allowed {
            return Ok(());
        }
        let (by, way) = (
            Duration::from_millis(offset.unsigned_abs()),
            if offset > 0 { "ahead of" } else { "behind" },
        );
        Err(format!(
            "this replica's clock is {:.1}s {way} S3's (more than half of --clock-skew-margin {}): \
             it does not sweep, evict or take over warms until its clock is corrected (NTP, chrony)",
            by.as_secs_f64(),
            humantime::format_duration(self.margin)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_are_judged_a_margin_late() {
        let judge = Judge::new(Duration::from_secs(5));
        assert_eq!(judge.settled(60_000), 55_000);
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        assert_eq!(
            judge.settled_stamp(t),
            SystemTime::UNIX_EPOCH + Duration::from_secs(94)
        );
    }
}
