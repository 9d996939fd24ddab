//! Deterministic interleaving test of warm vs evict vs sweep.
//!
//! Every store and index call of the concurrent actors passes through a
//! gate that holds it until the scheduler below releases it. The scheduler
//! waits until every actor is blocked at a gate (or done), then releases one
//! call, and explores the orders depth-first (stateless model checking over
//! the release order): every schedule up to a bound. After each schedule it
//! checks the guarantees: a warm that reports SUCCEEDED under a live lease
//! has every object present, every index entry's object exists with the
//! recorded ETag, and no claim is left behind. Each exploration runs on the
//! SQLite index (exhaustively where the bound allows) and on the DynamoDB
//! index on moto (warm vs evict exhaustively, the others bounded).

// Whole warms run in these tests: their futures nest deep.
#![recursion_limit = "256"]
#![allow(clippy::unwrap_used)]

use expresscache_server::index::Records;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use expresscache::proto::v1 as pb;
use expresscache::{EvictSpec, Limits, WarmSpec};
use expresscache_server::core::clock::Clock;
use expresscache_server::core::clock::ManualClock;
use expresscache_server::core::operation::Outcome;
use expresscache_server::evict::{EvictSettings, Evictor};
use expresscache_server::gate::{Gate, Pass};
use expresscache_server::index::dynamo::TablePrefix;
use expresscache_server::index::{CacheIndex, CountingIndex, DynamoIndex, KeyRange, SqliteIndex};
use expresscache_server::progress::Progress;
use expresscache_server::store::{FaultStore, MemoryStore, Op};
use expresscache_server::testing::{unique, Moto};
use expresscache_server::warm::{WarmSettings, Warmer};
use futures::future::BoxFuture;
use tokio::sync::oneshot;

const SRC: &str = "src";
const DIR: &str = "cache--use1-az4--x-s3";

tokio::task_local! {
    static ACTOR: &'static str;
}

#[derive(Debug, Default)]
struct State {
    enabled: bool,
    waiting: Vec<(String, oneshot::Sender<()>)>,
    in_flight: usize,
    generation: u64,
}

/// The gate: parks each call until the scheduler lets it through.
#[derive(Debug, Clone, Default)]
struct Sched(Arc<Mutex<State>>);

struct InFlight(Arc<Mutex<State>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut st = self.0.lock().unwrap();
        st.in_flight -= 1;
        st.generation += 1;
    }
}

impl Gate for Sched {
    fn enter(&self, call: &'static str, subject: &str) -> BoxFuture<'static, Pass> {
        let state = Arc::clone(&self.0);
        let mut st = self.0.lock().unwrap();
        if !st.enabled {
            return Box::pin(async { Box::new(()) as Pass });
        }
        let actor = ACTOR.try_with(|a| *a).unwrap_or("?");
        let (tx, rx) = oneshot::channel();
        st.waiting.push((format!("{actor}:{call}:{subject}"), tx));
        st.generation += 1;
        Box::pin(async move {
            rx.await.expect("scheduler dropped a call");
            Box::new(InFlight(state)) as Pass
        })
    }
}

type Store = FaultStore<MemoryStore>;

struct World<I> {
    sched: Sched,
    store: Arc<Store>,
    index: Arc<CountingIndex<I>>,
    clock: Arc<ManualClock>,
}

impl<I: CacheIndex> World<I> {
    fn new(keys: &[&str], index: I) -> Self {
        let sched = Sched::default();
        let mem = MemoryStore::with_page_size(10);
        mem.create_bucket(SRC);
        mem.create_bucket(DIR);
        for k in keys {
            mem.put(SRC, k, 10);
        }
        Self {
            store: Arc::new(FaultStore::new(mem).with_gate(Arc::new(sched.clone()))),
            index: Arc::new(CountingIndex::new(index).with_gate(Arc::new(sched.clone()))),
            clock: Arc::new(ManualClock::new(1_000_000)),
            sched,
        }
    }

    fn warmer(&self) -> Warmer {
        Warmer::new(
            self.store.clone(),
            self.index.clone(),
            self.clock.clone(),
            WarmSettings {
                max_copy_tasks: Some(4),
                // One flat listing: "a/" and its sub-prefix "a/b/" listed
                // apart multiply the schedules past what can be explored,
                // and add nothing to what is checked here (each page is
                // merged with the index on its own either way).
                list_fanout: 1,
                ..WarmSettings::default()
            },
        )
    }

    fn evictor(&self) -> Evictor {
        Evictor::new(
            self.store.clone(),
            self.index.clone(),
            self.clock.clone(),
            EvictSettings {
                claim_ttl: Duration::from_secs(600),
                // One attempt: a lost reply is then abandoned at once (the
                // retry path has its own tests; each retry here would
                // multiply the schedules).
                delete_attempts: 1,
                // The manual clock does not move during a schedule: an
                // abandoned eviction's claims lapse at once.
                request_timeout: Duration::ZERO,
                ..EvictSettings::default()
            },
        )
    }

    /// Runs a warm; returns its outcome.
    async fn warm(&self, prefixes: &[&str], ttl_s: i64, op: &str) -> Outcome {
        let spec = WarmSpec::parse(
            &pb::WarmCacheRequest {
                bucket: SRC.into(),
                prefixes: prefixes.iter().map(|p| (*p).to_owned()).collect(),
                directory_bucket: DIR.into(),
                ttl: Some(prost_types::Duration {
                    seconds: ttl_s,
                    nanos: 0,
                }),
                ..Default::default()
            },
            &Limits::default(),
        )
        .unwrap();
        let (progress, _rx) = Progress::new(op.into(), self.clock.clone());
        match self.warmer().run(&spec, &progress, op).await {
            Ok(outcome) => outcome.outcome(),
            Err(_) => Outcome::Failed,
        }
    }

    async fn evict(&self, prefix: &str, force: bool) {
        let spec = EvictSpec::parse(
            &pb::EvictRequest {
                directory_bucket: DIR.into(),
                prefixes: vec![prefix.into()],
                force,
            },
            &Limits::default(),
        )
        .unwrap();
        self.evictor().evict(&spec).await.unwrap();
    }

    /// Every entry's object exists with the recorded ETag; no live claims
    /// left. An entry whose eviction ended unconfirmed (a lapsed evict
    /// claim kept as a marker) vouches for nothing and is exempt: warms copy
    /// it again.
    async fn check_consistent(&self) -> Result<(), String> {
        let records = self
            .index
            .records(DIR, &KeyRange::prefix(""), 1000)
            .await
            .unwrap();
        let now = self.clock.now();
        for r in &records {
            if r.is_unconfirmed(now) {
                continue;
            }
            if let Some(c) = &r.claim {
                return Err(format!("claim left on {}: {c:?}", r.key));
            }
            if let Some(e) = &r.entry {
                let actual = self.store.inner().etag(DIR, &r.key);
                if actual.as_deref() != Some(e.dest_etag.as_str()) {
                    return Err(format!(
                        "entry {} says {} but the bucket has {actual:?}",
                        r.key, e.dest_etag
                    ));
                }
            }
        }
        Ok(())
    }

    fn present(&self, keys: &[&str]) -> Result<(), String> {
        let in_bucket = self.store.inner().keys(DIR);
        for k in keys {
            if !in_bucket.iter().any(|b| b == k) {
                return Err(format!("{k} missing from the directory bucket"));
            }
        }
        Ok(())
    }
}

/// Releases gated calls in the order `prefix` dictates (then lowest label
/// first) until every actor is done; returns the arity of each decision.
async fn drive(
    sched: &Sched,
    actors: &[tokio::task::JoinHandle<()>],
    prefix: &[usize],
) -> Vec<(usize, usize)> {
    let mut decisions = Vec::new();
    loop {
        // Quiesce: nothing in flight and no new arrivals for a while.
        let mut last = u64::MAX;
        loop {
            for _ in 0..64 {
                tokio::task::yield_now().await;
            }
            let st = sched.0.lock().unwrap();
            if st.in_flight == 0 && st.generation == last {
                break;
            }
            last = st.generation;
        }
        if actors.iter().all(|a| a.is_finished()) {
            return decisions;
        }
        let go = {
            let mut st = sched.0.lock().unwrap();
            if st.waiting.is_empty() {
                None
            } else {
                st.waiting.sort_by(|a, b| a.0.cmp(&b.0));
                let n = st.waiting.len();
                let choice = prefix.get(decisions.len()).copied().unwrap_or(0).min(n - 1);
                decisions.push((choice, n));
                let (_, tx) = st.waiting.remove(choice);
                st.in_flight += 1;
                Some(tx)
            }
        };
        match go {
            Some(tx) => {
                let _ = tx.send(());
            }
            // Everyone is asleep (backoff, polling): let virtual time pass.
            None => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// The next schedule in depth-first order, or `None` when all are done.
fn next_prefix(decisions: &[(usize, usize)]) -> Option<Vec<usize>> {
    let mut d: Vec<(usize, usize)> = decisions.to_vec();
    while let Some((choice, n)) = d.pop() {
        if choice + 1 < n {
            let mut p: Vec<usize> = d.iter().map(|(c, _)| *c).collect();
            p.push(choice + 1);
            return Some(p);
        }
    }
    None
}

type Actor<I> = fn(Arc<World<I>>) -> BoxFuture<'static, Option<Outcome>>;
type Check<I> = fn(&World<I>, &BTreeMap<&'static str, Option<Outcome>>) -> Result<(), String>;
type Setup<I> = for<'a> fn(&'a World<I>) -> BoxFuture<'a, ()>;

/// Explores up to `limit` schedules of `actors` after `setup`; returns how
/// many it ran. Panics with the schedule of the first violation.
async fn explore<I: CacheIndex, F: AsyncFn() -> I>(
    keys: &[&str],
    new_index: F,
    setup: Setup<I>,
    actors: &[(&'static str, Actor<I>)],
    check: Check<I>,
    limit: usize,
) -> (usize, bool) {
    let mut prefix = Vec::new();
    let mut runs = 0;
    loop {
        let world = Arc::new(World::new(keys, new_index().await));
        setup(&world).await;
        world.sched.0.lock().unwrap().enabled = true;
        let outcomes: Arc<Mutex<BTreeMap<&'static str, Option<Outcome>>>> = Arc::default();
        let handles: Vec<_> = actors
            .iter()
            .map(|(name, f)| {
                let (w, out, name) = (world.clone(), outcomes.clone(), *name);
                let fut = f(w);
                tokio::spawn(ACTOR.scope(name, async move {
                    let o = fut.await;
                    out.lock().unwrap().insert(name, o);
                }))
            })
            .collect();
        let decisions = drive(&world.sched, &handles, &prefix).await;
        for h in handles {
            h.await.unwrap();
        }
        world.sched.0.lock().unwrap().enabled = false;
        runs += 1;
        let outcomes = outcomes.lock().unwrap().clone();
        let verdict = match world.check_consistent().await {
            Ok(()) => check(&world, &outcomes),
            Err(e) => Err(e),
        };
        if let Err(e) = verdict {
            let schedule: Vec<usize> = decisions.iter().map(|(c, _)| *c).collect();
            panic!("violation after {runs} schedules: {e}\nschedule {schedule:?}\noutcomes {outcomes:?}");
        }
        match next_prefix(&decisions) {
            Some(p) if runs < limit => prefix = p,
            Some(_) => return (runs, false),
            None => return (runs, true),
        }
    }
}

/// Warms `a/` with a 1s TTL and lets it expire.
fn expired_cache<I: CacheIndex>(w: &World<I>) -> BoxFuture<'_, ()> {
    Box::pin(async move {
        assert_eq!(w.warm(&["a/"], 1, "setup").await, Outcome::Succeeded);
        // Past the lease's end and the default 5 s clock skew margin.
        w.clock.advance(10_000);
    })
}

/// [`expired_cache`], and from now on every DeleteObjects reaches the
/// bucket but its reply is lost (as if the sweeper crashed right after it).
fn expired_cache_losing_delete_replies<I: CacheIndex>(w: &World<I>) -> BoxFuture<'_, ()> {
    Box::pin(async move {
        expired_cache(w).await;
        w.store.lose_replies(Op::Delete, 1_000);
    })
}

fn warm_a<I: CacheIndex>(w: Arc<World<I>>) -> BoxFuture<'static, Option<Outcome>> {
    Box::pin(async move { Some(w.warm(&["a/"], 3600, "warm").await) })
}

fn sweep<I: CacheIndex>(w: Arc<World<I>>) -> BoxFuture<'static, Option<Outcome>> {
    Box::pin(async move {
        w.evictor().sweep_once().await.unwrap();
        None
    })
}

fn evict_child<I: CacheIndex>(w: Arc<World<I>>) -> BoxFuture<'static, Option<Outcome>> {
    Box::pin(async move {
        w.evict("a/b/", false).await;
        None
    })
}

fn warm_root<I: CacheIndex>(w: Arc<World<I>>) -> BoxFuture<'static, Option<Outcome>> {
    Box::pin(async move { Some(w.warm(&[""], 3600, "warm2").await) })
}

const KEYS: &[&str] = &["a/1", "a/b/2"];

async fn sqlite() -> SqliteIndex {
    SqliteIndex::open_in_memory().unwrap()
}

/// A warm that succeeded under its (live, 1h) lease has every key present.
fn warm_ready<I: CacheIndex>(
    w: &World<I>,
    out: &BTreeMap<&'static str, Option<Outcome>>,
) -> Result<(), String> {
    for (name, o) in out {
        match o {
            Some(Outcome::Succeeded) => w.present(KEYS)?,
            Some(other) => return Err(format!("{name} ended {other:?}")),
            None => {}
        }
    }
    Ok(())
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn warm_against_a_sweep_of_the_expired_lease() {
    let (runs, complete) = explore(
        KEYS,
        sqlite,
        expired_cache,
        &[("warm", warm_a), ("sweep", sweep)],
        warm_ready,
        20_000,
    )
    .await;
    println!("warm vs sweep: {runs} schedules explored (exhaustive: {complete})");
    assert!(
        complete,
        "the bound cut the exploration short after {runs} schedules"
    );
    assert!(
        runs > 10,
        "only {runs} schedules: the gate is not interleaving anything"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn warm_against_an_evict_of_a_child_prefix() {
    let (runs, complete) = explore(
        KEYS,
        sqlite,
        expired_cache,
        &[("warm", warm_a), ("evict", evict_child)],
        warm_ready,
        20_000,
    )
    .await;
    println!("warm vs evict: {runs} schedules explored (exhaustive: {complete})");
    assert!(
        complete,
        "the bound cut the exploration short after {runs} schedules"
    );
    assert!(runs > 10);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn two_overlapping_warms_against_a_sweep() {
    let (runs, complete) = explore(
        KEYS,
        sqlite,
        expired_cache,
        &[("warm", warm_a), ("warm2", warm_root), ("sweep", sweep)],
        warm_ready,
        1_000,
    )
    .await;
    println!("two warms vs sweep: {runs} schedules explored (exhaustive: {complete})");
    assert!(runs > 10);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn warm_against_a_sweep_whose_delete_replies_are_lost() {
    let (runs, complete) = explore(
        KEYS,
        sqlite,
        expired_cache_losing_delete_replies,
        &[("warm", warm_a), ("sweep", sweep)],
        warm_ready,
        20_000,
    )
    .await;
    println!("warm vs sweep with lost delete replies: {runs} schedules explored (exhaustive: {complete})");
    assert!(
        complete,
        "the bound cut the exploration short after {runs} schedules"
    );
    assert!(runs > 10);
}

/// Fresh DynamoDB tables on `moto` for each schedule.
async fn dynamo(sdk: &aws_config::SdkConfig) -> DynamoIndex {
    let prefix = TablePrefix::new(&unique("il")).unwrap();
    let index = DynamoIndex::connect(sdk, &prefix);
    index.create_tables().await.unwrap();
    index
}

/// The same explorations on the DynamoDB index (moto), bounded: each
/// schedule needs fresh tables and real requests, so the first schedules
/// in depth-first order are run, not all of them. Real time, not paused
/// time: the SDK's timeouts must not fire while moto answers.
async fn bounded_on_dynamodb(
    setup: Setup<DynamoIndex>,
    actors: &[(&'static str, Actor<DynamoIndex>)],
    schedules: usize,
) {
    let moto = Moto::start();
    let sdk = moto.sdk_config();
    let (runs, complete) = explore(
        KEYS,
        async || dynamo(&sdk).await,
        setup,
        actors,
        warm_ready,
        schedules,
    )
    .await;
    println!("on DynamoDB: {runs} schedules explored (exhaustive: {complete})");
    assert!(
        runs >= schedules.min(10),
        "only {runs} schedules: the gate is not interleaving anything"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn dynamodb_warm_against_a_sweep_of_the_expired_lease() {
    bounded_on_dynamodb(expired_cache, &[("warm", warm_a), ("sweep", sweep)], 60).await;
}

#[tokio::test(flavor = "current_thread")]
async fn dynamodb_warm_against_an_evict_of_a_child_prefix() {
    bounded_on_dynamodb(
        expired_cache,
        &[("warm", warm_a), ("evict", evict_child)],
        200,
    )
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn dynamodb_warm_against_a_sweep_whose_delete_replies_are_lost() {
    bounded_on_dynamodb(
        expired_cache_losing_delete_replies,
        &[("warm", warm_a), ("sweep", sweep)],
        60,
    )
    .await;
}
