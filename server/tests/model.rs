//! Reference-model test of the cache rules: random sequences of warm, evict,
//! sweep, clock advance and source change run against the real planner,
//! warm, evictor and index (SQLite; DynamoDB on moto) over the in-memory
//! store, and after every step the directory bucket and the index must
//! equal what a simple model of the rules (doc/SEMANTICS.md) says.

// The reference model drives whole warms: their futures nest deep.
#![recursion_limit = "256"]
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use expresscache::proto::v1 as pb;
use expresscache::{EvictSpec, Limits, WarmSpec};
use expresscache_server::core::clock::{Clock, ManualClock};
use expresscache_server::core::operation::Outcome;
use expresscache_server::evict::{EvictSettings, Evictor};
use expresscache_server::index::{CacheIndex, KeyRange, Record, SqliteIndex};
use expresscache_server::progress::Progress;
use expresscache_server::store::{FaultStore, MemoryStore, Op};
use expresscache_server::warm::{WarmOutcome, WarmSettings, Warmer};
use proptest::prelude::*;

const SRC: &str = "src";
const DIR: &str = "cache--use1-az4--x-s3";
const KEYS: &[&str] = &["a/1", "a/2", "a/b/1", "a/b/2", "c/1", "c/d/1"];
/// The clock skew margin both the real code and the model apply: a lease
/// or claim is over only this long past its deadline.
const SKEW_MS: i64 = 1_000;
const PREFIXES: &[&str] = &["", "a/", "a/b/", "c/", "c/d/"];

#[derive(Debug, Clone)]
enum Step {
    Warm {
        prefixes: Vec<usize>,
        ttl_s: u64,
        force: bool,
    },
    Evict {
        prefix: usize,
        force: bool,
    },
    Sweep,
    /// An evict (or sweep) whose DeleteObjects reaches S3 but every reply
    /// is lost: the objects are gone, the evictor cannot know.
    EvictLostReply {
        prefix: usize,
    },
    SweepLostReply,
    Advance(i64),
    Change(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (proptest::collection::btree_set(0..PREFIXES.len(), 1..=2), 1u64..=5, proptest::bool::weighted(0.2))
            .prop_map(|(p, ttl_s, force)| Step::Warm { prefixes: p.into_iter().collect(), ttl_s, force }),
        2 => (0..PREFIXES.len(), proptest::bool::weighted(0.3)).prop_map(|(prefix, force)| Step::Evict { prefix, force }),
        3 => Just(Step::Sweep),
        1 => (0..PREFIXES.len()).prop_map(|prefix| Step::EvictLostReply { prefix }),
        1 => Just(Step::SweepLostReply),
        3 => (1i64..=4_000).prop_map(Step::Advance),
        2 => (0..KEYS.len()).prop_map(Step::Change),
    ]
}

/// The rules, stated as plainly as possible.
#[derive(Debug, Default)]
struct Model {
    now: i64,
    /// Source key -> current ETag.
    source: BTreeMap<String, String>,
    /// Lease prefix -> expiry.
    leases: BTreeMap<String, i64>,
    /// Cached key -> source ETag it was copied from.
    cache: BTreeMap<String, String>,
}

impl Model {
    /// "Now" for deciding that a lease is over: past the skew margin.
    fn settled(&self) -> i64 {
        self.now - SKEW_MS
    }

    /// A live lease covers `key`, on any clock within the margin of ours.
    fn live_cover(&self, key: &str) -> bool {
        self.leases
            .iter()
            .any(|(p, &exp)| key.starts_with(p.as_str()) && exp > self.settled())
    }

    fn warm(&mut self, prefixes: &[&str], ttl_ms: i64) {
        for p in prefixes {
            let e = self.leases.entry((*p).to_owned()).or_insert(0);
            // The service rounds expiries up to the second.
            *e = (*e).max(expresscache_server::warm::coarsen_expiry(self.now + ttl_ms));
        }
        for (k, etag) in &self.source {
            if prefixes.iter().any(|p| k.starts_with(p)) {
                self.cache.insert(k.clone(), etag.clone());
            }
        }
    }

    fn evict(&mut self, prefix: &str, force: bool) {
        let settled = self.settled();
        for (p, exp) in self.leases.iter_mut() {
            if p.starts_with(prefix) && *exp > settled {
                *exp = settled;
            }
        }
        let doomed: Vec<String> = self
            .cache
            .keys()
            .filter(|k| k.starts_with(prefix) && (force || !self.live_cover(k)))
            .cloned()
            .collect();
        for k in doomed {
            self.cache.remove(&k);
        }
    }

    fn sweep(&mut self) {
        let expired: Vec<String> = self
            .leases
            .iter()
            .filter(|(_, &exp)| exp <= self.settled())
            .map(|(p, _)| p.clone())
            .collect();
        let doomed: Vec<String> = self
            .cache
            .keys()
            .filter(|k| expired.iter().any(|p| k.starts_with(p.as_str())) && !self.live_cover(k))
            .cloned()
            .collect();
        for k in doomed {
            self.cache.remove(&k);
        }
        for p in expired {
            self.leases.remove(&p);
        }
    }
}

struct Real<I> {
    store: Arc<FaultStore<MemoryStore>>,
    index: Arc<I>,
    clock: Arc<ManualClock>,
    warmer: Warmer,
    evictor: Evictor,
}

impl<I: CacheIndex> Real<I> {
    fn new(index: I) -> Self {
        let store = Arc::new(FaultStore::new(MemoryStore::with_page_size(2)));
        store.inner().create_bucket(SRC);
        store.inner().create_bucket(DIR);
        let index = Arc::new(index);
        let clock = Arc::new(ManualClock::new(1_000_000));
        let warmer = Warmer::new(
            store.clone(),
            index.clone(),
            clock.clone(),
            WarmSettings {
                skew_margin: Duration::from_millis(SKEW_MS as u64),
                ..WarmSettings::default()
            },
        );
        let evictor = Evictor::new(
            store.clone(),
            index.clone(),
            clock.clone(),
            EvictSettings {
                skew_margin: Duration::from_millis(SKEW_MS as u64),
                retry_base_delay: Duration::from_millis(1),
                // The model's clock moves only by steps: an abandoned
                // eviction's claims lapse at once.
                request_timeout: Duration::ZERO,
                ..EvictSettings::default()
            },
        );
        Self {
            store,
            index,
            clock,
            warmer,
            evictor,
        }
    }
}

fn prefixes_of(idx: &[usize]) -> Vec<String> {
    idx.iter().map(|&i| PREFIXES[i].to_owned()).collect()
}

async fn run<I: CacheIndex>(steps: Vec<Step>, index: I) -> Result<(), TestCaseError> {
    let real = Real::new(index);
    let mut model = Model {
        now: real.clock.now(),
        ..Model::default()
    };
    for k in KEYS {
        let etag = real.store.inner().put(SRC, k, 10);
        model.source.insert((*k).to_owned(), etag);
    }
    for (i, step) in steps.iter().enumerate() {
        match step {
            Step::Warm {
                prefixes,
                ttl_s,
                force,
            } => {
                let ps = prefixes_of(prefixes);
                let req = pb::WarmCacheRequest {
                    bucket: SRC.into(),
                    prefixes: ps.clone(),
                    directory_bucket: DIR.into(),
                    ttl: Some(prost_types::Duration {
                        seconds: *ttl_s as i64,
                        nanos: 0,
                    }),
                    force_copy: *force,
                    ..Default::default()
                };
                let spec = WarmSpec::parse(&req, &Limits::default()).unwrap();
                let (progress, _rx) = Progress::new(format!("op{i}"), real.warmer.clock.clone());
                let outcome = real
                    .warmer
                    .run(&spec, &progress, &format!("op{i}"))
                    .await
                    .unwrap();
                prop_assert_eq!(outcome, WarmOutcome::Succeeded);
                let last = progress.finish(Outcome::Succeeded, None);
                prop_assert_eq!(last.counters.objects_failed, 0);
                let refs: Vec<&str> = ps.iter().map(String::as_str).collect();
                model.warm(&refs, *ttl_s as i64 * 1000);
            }
            Step::Evict { prefix, force } => {
                let spec = EvictSpec::parse(
                    &pb::EvictRequest {
                        directory_bucket: DIR.into(),
                        prefixes: vec![PREFIXES[*prefix].into()],
                        force: *force,
                    },
                    &Limits::default(),
                )
                .unwrap();
                let resp = real.evictor.evict(&spec).await.unwrap();
                prop_assert!(resp.tally.failures.is_empty());
                model.evict(PREFIXES[*prefix], *force);
            }
            Step::Sweep => {
                real.evictor.sweep_once().await.unwrap();
                model.sweep();
            }
            Step::EvictLostReply { prefix } => {
                let spec = EvictSpec::parse(
                    &pb::EvictRequest {
                        directory_bucket: DIR.into(),
                        prefixes: vec![PREFIXES[*prefix].into()],
                        force: false,
                    },
                    &Limits::default(),
                )
                .unwrap();
                real.store.lose_replies(Op::Delete, 1_000);
                // Fails if it had anything to delete; either way S3 did
                // what it was asked.
                let _ = real.evictor.evict(&spec).await;
                real.store.clear();
                model.evict(PREFIXES[*prefix], false);
            }
            Step::SweepLostReply => {
                real.store.lose_replies(Op::Delete, 1_000);
                real.evictor.sweep_once().await.unwrap();
                real.store.clear();
                model.sweep();
            }
            Step::Advance(ms) => {
                real.clock.advance(*ms);
                model.now += ms;
            }
            Step::Change(k) => {
                let etag = real.store.inner().put(SRC, KEYS[*k], 10 + *k as u64);
                model.source.insert(KEYS[*k].to_owned(), etag);
            }
        }
        // The directory bucket holds exactly what the model caches...
        let in_bucket = real.store.inner().keys(DIR);
        let expected: Vec<String> = model.cache.keys().cloned().collect();
        prop_assert_eq!(&in_bucket, &expected, "bucket after step {} {:?}", i, step);
        // ...and the index vouches for exactly those, each from the version
        // the model says, with no live claim left behind. An entry whose
        // eviction ended unconfirmed (a lapsed evict claim) vouches for
        // nothing: a warm copies it again.
        let records = real
            .index
            .records(DIR, &KeyRange::prefix(""), 1000)
            .await
            .unwrap();
        let unconfirmed = |r: &&Record| r.is_unconfirmed(model.now);
        let recorded: BTreeMap<String, String> = records
            .iter()
            .filter(|r| !unconfirmed(r))
            .filter_map(|r| {
                r.entry
                    .as_ref()
                    .map(|e| (r.key.clone(), e.source_etag.clone()))
            })
            .collect();
        prop_assert_eq!(&recorded, &model.cache, "index after step {} {:?}", i, step);
        prop_assert!(
            records.iter().all(|r| r.claim.is_none() || unconfirmed(&r)),
            "claims left after step {}",
            i
        );
        // Every live lease the model knows is live in the index too.
        for (p, &exp) in &model.leases {
            let live = real.index.covering_leases(DIR, p, model.now).await.unwrap();
            let has = live.iter().any(|l| &l.prefix == p && l.expires_at == exp);
            prop_assert_eq!(has, exp > model.now, "lease {:?} after step {}", p, i);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn the_cache_follows_the_reference_model(steps in proptest::collection::vec(step(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(steps, SqliteIndex::open_in_memory().unwrap()))?;
    }
}

/// The same model against the DynamoDB index on moto (fewer cases: every
/// index call is a request). One moto serves every case; each case gets
/// fresh tables.
#[test]
fn the_dynamodb_index_follows_the_reference_model() {
    use expresscache_server::index::dynamo::{DynamoIndex, TablePrefix};
    use expresscache_server::testing::{unique, Moto};
    use proptest::test_runner::{Config, TestRunner};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let moto = Moto::start();
    let sdk = moto.sdk_config();
    let mut runner = TestRunner::new(Config {
        cases: 16,
        ..Config::default()
    });
    let result = runner.run(&proptest::collection::vec(step(), 1..30), |steps| {
        rt.block_on(async {
            let prefix = TablePrefix::new(&unique("model")).unwrap();
            let index = DynamoIndex::connect(&sdk, &prefix);
            index.create_tables().await.unwrap();
            run(steps, index).await
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
