//! One warm, start to finish: lease, plan, claim, copy, record.
//!
//! Order matters for the guarantees (doc/SEMANTICS.md): leases are written
//! before the index is read and kept extended while the warm runs; a key is
//! claimed before it is copied, so overlapping warms copy it once; and an
//! entry is written only after its copy succeeded. Listing, planning and
//! copying overlap: the planner feeds bounded queues that the copiers
//! drain, so memory does not grow with the number of objects.
//!
//! Where each part lives: [`WarmRun`] (`run.rs`) is one warm's state and
//! the pipeline that joins the stages, each a type holding only what it
//! uses: `Lister` (`listing.rs`) pages through the source; `Triage`
//! (`planning.rs`) merges a page with the index and claims what to copy,
//! handing each key on as a `CopyTask` (`task.rs`); `Settler`
//! (`settle.rs`, `copying.rs`) takes one key to its end, waiting out
//! another holder and keeping its claim alive while it copies; `Offloader`
//! (`offload.rs`) copies through an S3 Batch Operations job instead and
//! judges what the job landed (`job_seen.rs`); `EntryWriter` (`writer.rs`)
//! records copies in batches. `KeyClaims` (`claims.rs`) is every claim the
//! warm takes, renews or releases; `LeaseKeeper` (`leases.rs`) writes and
//! renews its leases.

mod claims;
mod copying;
pub mod dry_run;
mod empty;
mod job_seen;
mod lease_writer;
#[cfg(any(test, feature = "testing"))]
pub use lease_writer::coarsen as coarsen_expiry;
pub use leases::LeaseKeeper;
mod leases;
mod listing;
mod offload;
mod phase;
mod planning;
mod run;
mod settle;
mod task;
mod writer;

#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod stall_tests;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use expresscache::WarmSpec;

use crate::core::clock::Clock;
use crate::engine::{CopyEngine, EngineSettings};
use crate::index::{CacheIndex, IndexError};
use crate::progress::Progress;
use crate::stop::StopSignal;
use crate::store::{ObjectStore, StoreError};

use run::WarmRun;

/// Tuning of the copy path.
#[derive(Debug, Clone)]
pub struct WarmSettings {
    /// Most keys one warm settles at once, whatever the adaptive limit;
    /// `None` = twice the engine's ceiling.
    pub max_copy_tasks: Option<usize>,
    /// Listings of one warm under way at once (a prefix's sub-prefixes are
    /// listed in parallel).
    pub list_fanout: usize,
    /// The shared copy engine: concurrency, retries, multipart.
    pub engine: EngineSettings,
    /// How long a claim on a key lasts; a holder that crashes blocks others
    /// at most this long.
    pub claim_ttl: Duration,
    /// First delay between checks while waiting for another operation's
    /// claim; grows to 1s.
    pub wait_poll: Duration,
    /// How far clocks may disagree: a claim is taken over only this long
    /// past its deadline (doc/SEMANTICS.md, clock skew).
    pub skew_margin: Duration,
    /// A warm that has made no progress at all (no listing page, no copy
    /// attempt ending, no index answer while waiting) for this long stops
    /// extending its leases: a stuck warm must not keep data alive forever.
    pub stall_limit: Duration,
}

impl Default for WarmSettings {
    fn default() -> Self {
        Self::from(&crate::config::Config::default())
    }
}

impl From<&crate::config::Config> for WarmSettings {
    fn from(c: &crate::config::Config) -> Self {
        Self {
            max_copy_tasks: None,
            list_fanout: c.list_concurrency,
            engine: EngineSettings::from(c),
            claim_ttl: Duration::from_secs(600),
            wait_poll: Duration::from_millis(50),
            skew_margin: c.clock_skew_margin,
            stall_limit: Duration::from_secs(15 * 60),
        }
    }
}

/// What a warm needs from the outside world. One warmer (and so one copy
/// engine, with its global cap) serves every warm of a server.
#[derive(Debug)]
pub struct Warmer {
    pub store: Arc<dyn ObjectStore>,
    pub index: Arc<dyn CacheIndex>,
    pub clock: Arc<dyn Clock>,
    pub settings: WarmSettings,
    pub engine: CopyEngine,
    /// The copy rate the last warm that copied measured (dry runs
    /// estimate durations from it).
    pub rate: dry_run::CopyRate,
    /// S3 Batch Operations offload, when configured.
    pub batch: Option<Arc<crate::batch::Offload>>,
    /// Merges concurrent writes of the same leases (a job array's joiners).
    pub leases: lease_writer::LeaseWriter,
}

impl Warmer {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        index: Arc<dyn CacheIndex>,
        clock: Arc<dyn Clock>,
        settings: WarmSettings,
    ) -> Self {
        Self {
            engine: CopyEngine::new(store.clone(), settings.engine.clone()),
            store,
            index,
            clock,
            settings,
            rate: dry_run::CopyRate::default(),
            batch: None,
            leases: lease_writer::LeaseWriter::default(),
        }
    }
}

/// How a warm that ran to its end ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarmOutcome {
    /// Every listed object is present and current.
    Succeeded,
    /// Some keys failed (the progress lists them); the rest is ready.
    PartiallyFailed,
    /// A user cancelled it: no new copy started after that.
    Cancelled,
    /// A shutdown interrupted it; it stays unfinished and resumes later.
    Interrupted,
}

impl WarmOutcome {
    /// The operation outcome it reports (an interrupted warm that is not
    /// resumed ends as cancelled).
    pub fn outcome(self) -> crate::core::operation::Outcome {
        use crate::core::operation::Outcome;
        match self {
            Self::Succeeded => Outcome::Succeeded,
            Self::PartiallyFailed => Outcome::PartiallyFailed,
            Self::Cancelled | Self::Interrupted => Outcome::Cancelled,
        }
    }
}

/// Why a warm could not do its job at all (per-key failures are not this).
#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    #[error("listing s3://{bucket}/{prefix} failed: {source}")]
    List {
        bucket: String,
        prefix: String,
        source: StoreError,
    },
    #[error(transparent)]
    Index(#[from] IndexError),
    /// One of this warm's leases ended while it ran or waited to be taken
    /// over (an `Evict` ended it, or it lapsed: the warm made no progress,
    /// or its server or the index was out for longer than the TTL):
    /// objects it had already counted as ready may have been deleted.
    #[error(
        "the lease on {prefix:?} ended while this warm ran or waited to be resumed (an Evict \
         ended it, or it lapsed: the warm made no progress, or its server or the index was \
         out for longer than its TTL), so objects it had counted as ready may have been \
         deleted; warm again to bring them back"
    )]
    LeaseEnded { prefix: String },
    /// The running warm this one joined failed as a whole.
    #[error("the warm this one joined (operation {operation_id}) failed: {error}")]
    JoinedFailed { operation_id: String, error: String },
    /// The S3 Batch Operations job could not be created, followed or
    /// read, or it failed as a whole.
    #[error("{0}")]
    Batch(String),
    /// No requested prefix listed any object, and the request did not
    /// allow that.
    #[error(
        "no object under any requested prefix of s3://{bucket} ({}): check the prefixes \
         (key prefixes inside the bucket, ending in '/', not s3:// URLs), or allow an \
         empty warm (--allow-empty, allow_empty)",
        prefixes.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>().join(", ")
    )]
    Empty {
        bucket: String,
        prefixes: Vec<String>,
    },
    /// A dry run was stopped before its plan was complete.
    #[error(
        "stopped before the plan was complete (the server is shutting down, or the caller left)"
    )]
    Stopped,
    /// A listing answered a continuation token it had answered before:
    /// following it would loop forever.
    #[error("listing s3://{bucket}/{prefix} repeated continuation token {token:?}")]
    ListingLoop {
        bucket: String,
        prefix: String,
        token: String,
    },
}

impl Warmer {
    /// Runs the warm as operation `owner`; per-key failures land in
    /// `progress` (and make the outcome PartiallyFailed), an error means the
    /// warm as a whole failed.
    #[cfg(any(test, feature = "testing"))]
    pub async fn run(
        &self,
        spec: &WarmSpec,
        progress: &Progress,
        owner: &str,
    ) -> Result<WarmOutcome, WarmError> {
        self.run_until(spec, progress, owner, &StopSignal::default())
            .await
    }

    /// The keeper of `spec`'s leases for operation `owner`: for a warm that
    /// joined another's work, its own leases at its own TTL.
    pub fn leases<'a>(
        &'a self,
        spec: &'a WarmSpec,
        progress: &'a Progress,
        owner: &'a str,
    ) -> LeaseKeeper<'a> {
        LeaseKeeper {
            w: self,
            spec,
            progress,
            owner,
        }
    }

    /// [`run`](Self::run) that also stops early when `stop` is set: no new
    /// listing page, no new copy; copies in flight finish and are recorded.
    pub async fn run_until(
        &self,
        spec: &WarmSpec,
        progress: &Progress,
        owner: &str,
        stop: &StopSignal,
    ) -> Result<WarmOutcome, WarmError> {
        WarmRun::new(self, spec, progress, owner, stop).run().await
    }
}
