//! A dry run: the warm's listing and plan, page by page against the index
//! exactly as a warm decides, with nothing claimed, copied or leased; what
//! it would copy is tallied per prefix and in requests and bytes for
//! pricing (`crate::pricing`), with the bytes it would keep stored for the
//! TTL. Only the keys the request selects are listed, tallied and priced
//! (`listing.rs` filters them).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use expresscache::WarmSpec;
use tokio::sync::mpsc;

use super::listing::Page;
use super::run::WarmRun;
use super::{WarmError, Warmer};
use crate::core::operation::Phase;
use crate::pricing::{copy_work, CopyWork, PlanWork, StorageWork};
use crate::progress::Progress;
use crate::stop::StopSignal;

use crate::core::limits::MAX_COPY_OBJECT;

/// What one listed prefix would take.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefixTally {
    pub objects_to_copy: u64,
    pub bytes_to_copy: u64,
    pub objects_cached: u64,
    pub bytes_cached: u64,
    pub objects_refused: u64,
}

/// What a warm of the spec would do now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DryPlan {
    /// By listing prefix.
    pub prefixes: BTreeMap<String, PrefixTally>,
    pub work: PlanWork,
    /// Objects to copy over [`MAX_COPY_OBJECT`].
    pub large_objects: u64,
    /// How long the listing and planning took.
    pub planning: Duration,
    /// The engine's copies at the last measured rate, if one was.
    pub copying: Option<Duration>,
}

/// The engine's copy rate as last measured by a warm that copied, as
/// (objects per second, bytes per second).
#[derive(Debug, Default)]
pub struct CopyRate(Mutex<Option<(f64, f64)>>);

impl CopyRate {
    /// Records a warm's copy phase: `objects` and `bytes` in `took`.
    /// Warms that copied fewer than `MIN_SAMPLE` (20) objects say little
    /// about the rate (start-up dominates) and are not recorded.
    #[allow(clippy::cast_precision_loss)]
    pub fn record(&self, objects: u64, bytes: u64, took: Duration) {
        const MIN_SAMPLE: u64 = 20;
        let secs = took.as_secs_f64();
        if objects < MIN_SAMPLE || secs <= 0.0 {
            return;
        }
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((objects as f64 / secs, bytes as f64 / secs));
    }

    /// How long copying `objects` of `bytes` takes at the last rate.
    #[allow(clippy::cast_precision_loss)]
    pub fn estimate(&self, objects: u64, bytes: u64) -> Option<Duration> {
        let (per_object, per_byte) = (*self.0.lock().unwrap_or_else(|e| e.into_inner()))?;
        let by_objects = objects as f64 / per_object;
        let by_bytes = if per_byte > 0.0 {
            bytes as f64 / per_byte
        } else {
            0.0
        };
        Duration::try_from_secs_f64(by_objects.max(by_bytes)).ok()
    }
}

impl Warmer {
    /// Plans `spec` without doing it: lists the source, decides each key
    /// against the index, and tallies what a warm would copy. `progress`
    /// shows the listing as it goes; `stop` ends it early (an error).
    pub async fn dry_run(
        &self,
        spec: &WarmSpec,
        progress: &Progress,
        stop: &StopSignal,
    ) -> Result<DryPlan, WarmError> {
        // An owner no claim has: every claim held by a running warm shows
        // as work to do (that warm is doing it).
        let owner = format!("dry-run-{}", uuid::Uuid::new_v4());
        let run = WarmRun::new(self, spec, progress, &owner, stop);
        run.dry_plan().await
    }
}

impl WarmRun<'_> {
    async fn dry_plan(&self) -> Result<DryPlan, WarmError> {
        let started = Instant::now();
        self.progress.set_phase(Phase::Planning);
        let listing = self.spec.listing_prefixes();
        let plan = DryPlan {
            prefixes: listing
                .iter()
                .map(|p| (p.as_str().to_owned(), PrefixTally::default()))
                .collect(),
            ..DryPlan::default()
        };
        let threshold = self.w.engine.settings().multipart_threshold;
        let part = self.w.engine.settings().part_size;
        let (pages_tx, mut pages) = mpsc::channel::<Page>(2);
        let listing = &listing;
        let triage = self.triage();
        let triage = &triage;
        // `move`: a planner that fails drops the receiver, which ends the
        // listing (a lister blocked on a full channel would wait forever).
        let planner = async move {
            let mut plan = plan;
            while let Some(page) = pages.recv().await {
                if self.stop.is_set() {
                    break;
                }
                let (tasks, counts) = triage.page(&page).await?;
                // The listing prefix the page is under (a tree listing
                // pages by sub-prefix).
                let under = listing
                    .iter()
                    .filter(|p| page.prefix.starts_with(p.as_str()))
                    .max_by_key(|p| p.as_str().len())
                    .map_or_else(String::new, |p| p.as_str().to_owned());
                let t = plan.prefixes.entry(under).or_default();
                t.objects_cached += counts.hits;
                t.bytes_cached += counts.hit_bytes;
                t.objects_refused += counts.refused;
                for task in &tasks {
                    let size = task.object.size;
                    t.objects_to_copy += 1;
                    t.bytes_to_copy += size;
                    // The engine's own part size for this object.
                    let part = crate::engine::part_size(size, part);
                    let engine = copy_work(size, threshold, part);
                    plan.work.engine.add(engine);
                    if size > MAX_COPY_OBJECT {
                        plan.large_objects += 1;
                        plan.work.batch_large.add(engine);
                    } else {
                        plan.work.batch_objects += 1;
                        plan.work.batch.add(CopyWork {
                            requests: 1,
                            billable_bytes: copy_work(size, u64::MAX, 0).billable_bytes,
                        });
                    }
                }
            }
            Ok::<_, WarmError>(plan)
        };
        let (listed, planned) = tokio::join!(self.lister.list(pages_tx), planner);
        listed?;
        let mut plan = planned?;
        if self.stop.is_set() {
            return Err(WarmError::Stopped);
        }
        plan.work.list_requests = self.lister.requests();
        plan.planning = started.elapsed();
        let (objects, bytes) = plan.prefixes.values().fold((0, 0), |(o, b), t| {
            (o + t.objects_to_copy, b + t.bytes_to_copy)
        });
        // What the warm keeps in the directory bucket, for its TTL.
        plan.work.storage = StorageWork {
            copied_bytes: bytes,
            cached_bytes: plan.prefixes.values().map(|t| t.bytes_cached).sum(),
            ttl: self.spec.ttl,
        };
        plan.copying = self.w.rate.estimate(objects, bytes);
        Ok(plan)
    }
}
