//! How far this replica's clock is from S3's. Every S3 response carries a
//! `Date` header (1 s resolution); the S3 client's interceptor feeds each
//! one to the process's [`ClockSkew`], and the work that decides by the
//! clock whether data is dead (sweeping, evicting, taking over another
//! replica's operations) asks it first: one fast clock anywhere must not
//! delete live data.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use aws_sdk_s3::config::interceptors::BeforeDeserializationInterceptorContextRef;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};

use crate::core::clock::{now_millis, Millis};
use crate::core::judge::Judge;

/// Weight of a new sample in the running estimate: one reply's 1 s
/// resolution and its round trip are noise, a real offset persists.
const WEIGHT: f64 = 0.2;

/// This process's clock offset from S3's, as measured so far.
#[derive(Debug, Default)]
pub struct ClockSkew {
    /// Local minus S3, in ms (positive: this clock is ahead).
    offset_ms: AtomicI64,
    measured: AtomicBool,
}

/// The one measurement of this process (every S3 client reports to it).
pub fn global() -> &'static ClockSkew {
    static SKEW: OnceLock<ClockSkew> = OnceLock::new();
    SKEW.get_or_init(ClockSkew::default)
}

impl ClockSkew {
    /// Notes a reply whose `Date` said `server` (whole seconds) and that
    /// arrived at local time `local`.
    pub fn observe(&self, server: Millis, local: Millis) {
        // S3's time at arrival lies in [server, server + 1 s): take the
        // middle.
        let sample = local - (server + 500);
        let offset = if self.measured.swap(true, Ordering::Relaxed) {
            let old = self.offset_ms.load(Ordering::Relaxed) as f64;
            (old + WEIGHT * (sample as f64 - old)).round() as i64
        } else {
            sample
        };
        self.offset_ms.store(offset, Ordering::Relaxed);
        // Made once: every S3 reply passes here.
        static GAUGE: OnceLock<metrics::Gauge> = OnceLock::new();
        GAUGE
            .get_or_init(|| metrics::gauge!(crate::metrics::CLOCK_SKEW))
            .set(offset as f64 / 1000.0);
    }

    /// Local minus S3 in ms, once any reply was seen.
    pub fn offset_ms(&self) -> Option<i64> {
        self.measured
            .load(Ordering::Relaxed)
            .then(|| self.offset_ms.load(Ordering::Relaxed))
    }

    /// Whether clock-judged deletions and takeovers may go ahead with a
    /// skew margin of `margin`: not while this clock is more than half the
    /// margin from S3's (the other half is for the other replicas). The
    /// error says why, for logs and callers.
    pub fn check(&self, margin: Duration) -> Result<(), String> {
        let Some(offset) = self.offset_ms() else {
            return Ok(());
        };
        Judge::new(margin).fits(offset)
    }
}

/// [`ClockSkew::check`] after one request to S3 (a HeadBucket of
/// `bucket`, whose reply's `Date` is measured): what sweeping, evicting and
/// taking over judge by, so a replica that has not talked to S3 lately, or
/// since it started, judges by a fresh measurement.
pub async fn check_against<S: crate::store::ObjectStore + ?Sized>(
    store: &S,
    bucket: &str,
    margin: Duration,
) -> Result<(), String> {
    if let Err(e) = store.check_bucket(bucket).await {
        tracing::debug!(bucket, error = %e, "measuring the clock against S3 failed");
    }
    global().check(margin)
}

/// The S3 client interceptor that feeds [`global`] from every reply.
#[derive(Debug)]
pub struct MeasureSkew;

impl Intercept for MeasureSkew {
    fn name(&self) -> &'static str {
        "MeasureSkew"
    }

    fn read_before_deserialization(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        let date = context
            .response()
            .headers()
            .get("date")
            .and_then(|d| {
                aws_sdk_s3::primitives::DateTime::from_str(
                    d,
                    aws_sdk_s3::primitives::DateTimeFormat::HttpDate,
                )
                .ok()
            })
            .and_then(|d| d.to_millis().ok());
        if let Some(server) = date {
            global().observe(server, now_millis());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_follows_the_replies_and_the_judgement_allows_half_the_margin() {
        let skew = ClockSkew::default();
        assert_eq!(skew.offset_ms(), None);
        assert!(
            skew.check(Duration::from_secs(5)).is_ok(),
            "unknown: no verdict"
        );
        // This clock 10.5 s ahead: S3 said :00 when it read 10.9 s later.
        skew.observe(1_000_000, 1_010_900);
        assert_eq!(skew.offset_ms(), Some(10_400));
        let why = skew.check(Duration::from_secs(5)).unwrap_err();
        assert!(why.contains("10.4s ahead of S3's"), "{why}");
        // One noisy reply moves the estimate only a little.
        skew.observe(2_000_000, 2_000_500);
        assert_eq!(skew.offset_ms(), Some(8_320));
        assert!(Judge::new(Duration::from_secs(5)).fits(3_400).is_ok());
        assert!(Judge::new(Duration::from_secs(5))
            .fits(-3_600)
            .unwrap_err()
            .contains("behind"));
        assert!(
            Judge::new(Duration::ZERO).fits(900).is_ok(),
            "within a Date header's resolution, even with no margin"
        );
    }
}
