//! The limiter alone, and driven by a model of a server (a fixed number of
//! requests served at once, a fixed service time, a round trip on top) in
//! tokio's paused time: the numbers below are virtual time, so every run
//! gives the same ones, whatever the machine is doing.

use super::*;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use tokio::sync::Semaphore;

const MS: Duration = Duration::from_millis(1);

/// Feeds one window of `latency` at full use: as many requests as the
/// limit admits, each succeeding (twice, if the window is larger).
async fn window(l: &Arc<AdaptiveLimit>, latency: Duration) {
    let n = l.limit().max(MIN_WINDOW);
    let mut slots = Vec::new();
    for _ in 0..l.limit() {
        slots.push(l.acquire().await);
    }
    for i in 0..n {
        l.on_success(&slots[i % slots.len()], latency, 4096);
    }
    drop(slots);
}

#[tokio::test]
async fn admits_up_to_the_limit_and_frees_on_drop() {
    let l = AdaptiveLimit::new(2, 1, 10);
    let a = l.acquire().await;
    let _b = l.acquire().await;
    let third = tokio::time::timeout(Duration::from_millis(20), l.acquire()).await;
    assert!(third.is_err(), "a third request waits");
    drop(a);
    let _c = tokio::time::timeout(Duration::from_millis(200), l.acquire())
        .await
        .expect("a freed slot admits the next");
}

#[tokio::test(start_paused = true)]
async fn slow_start_doubles_per_window_up_to_the_ceiling() {
    let l = AdaptiveLimit::new(16, 1, 1000);
    let mut seen = Vec::new();
    for _ in 0..8 {
        window(&l, 50 * MS).await;
        seen.push(l.limit());
    }
    assert_eq!(seen, [32, 64, 128, 256, 512, 1000, 1000, 1000]);
}

#[tokio::test(start_paused = true)]
async fn a_latency_jump_cuts_the_limit_in_proportion_and_ends_slow_start() {
    let l = AdaptiveLimit::new(64, 1, 10_000);
    window(&l, 50 * MS).await; // the baseline: 50 ms
    assert_eq!(l.limit(), 128);
    // 150 ms is 3x the baseline; one such window may be a hiccup...
    window(&l, 150 * MS).await;
    assert_eq!(l.limit(), 128);
    // ...two in a row cut to 128 * 2 * 60 / 150 (the baseline moved a
    // tenth of the way each time: 60, then 69 ms).
    window(&l, 150 * MS).await;
    assert_eq!(l.limit(), 102);
    // Far slower: never more than halved at once.
    window(&l, 2000 * MS).await;
    assert_eq!(l.limit(), 51);
    // Within the tolerance: grows by its square root, not doubling.
    window(&l, 60 * MS).await;
    assert_eq!(l.limit(), 58);
}

#[tokio::test(start_paused = true)]
async fn latency_alone_never_cuts_below_the_floor() {
    let l = AdaptiveLimit::new(64, 1, 10_000);
    window(&l, MS).await;
    // Every window 4x slower than the one before: always a queue.
    let mut latency = MS;
    for _ in 0..12 {
        latency *= 4;
        window(&l, latency).await;
    }
    assert_eq!(l.limit(), LATENCY_FLOOR as usize);
}

#[tokio::test(start_paused = true)]
async fn a_queue_that_builds_slowly_is_tolerated_a_jump_is_not() {
    let l = AdaptiveLimit::new(64, 1, 100_000);
    window(&l, 10 * MS).await;
    // Latency 10% higher per window: the baseline keeps up, the limit
    // keeps growing (a loopback endpoint's latency grows like this with
    // every request in flight, while its throughput still does).
    let mut latency = 10.0;
    for _ in 0..8 {
        latency *= 1.1;
        let before = l.limit();
        window(&l, Duration::from_secs_f64(latency / 1000.0)).await;
        assert!(l.limit() > before, "{} > {before}", l.limit());
    }
    let before = l.limit();
    window(&l, Duration::from_secs_f64(latency * 3.0 / 1000.0)).await;
    window(&l, Duration::from_secs_f64(latency * 3.0 / 1000.0)).await;
    assert!(l.limit() < before);
}

#[tokio::test(start_paused = true)]
async fn only_requests_admitted_under_the_current_limit_judge_it() {
    let l = AdaptiveLimit::new(64, 1, 1000);
    let mut slots = Vec::new();
    for _ in 0..64 {
        slots.push(l.acquire().await);
    }
    for s in &slots {
        l.on_success(s, 10 * MS, 4096);
    }
    assert_eq!(l.limit(), 128);
    // Slow answers to a request admitted under the old limit say nothing
    // about the new one.
    for _ in 0..1000 {
        l.on_success(&slots[0], 900 * MS, 4096);
    }
    assert_eq!(l.limit(), 128);
}

#[tokio::test(start_paused = true)]
async fn a_limit_nobody_fills_does_not_grow() {
    let l = AdaptiveLimit::new(64, 1, 1000);
    // Windows of successes with one request in flight at a time.
    for _ in 0..4 {
        for _ in 0..64 {
            let s = l.acquire().await;
            l.on_success(&s, 10 * MS, 4096);
        }
    }
    assert_eq!(l.limit(), 64);
}

#[tokio::test(start_paused = true)]
async fn halves_on_throttle_once_per_cool_down() {
    let l = AdaptiveLimit::new(64, 1, 64);
    assert!(l.on_throttle());
    assert_eq!(l.limit(), 32);
    assert!(!l.on_throttle(), "a burst of SlowDowns is one signal");
    assert_eq!(l.limit(), 32);
    tokio::time::advance(Duration::from_millis(250)).await;
    assert!(l.on_throttle());
    assert_eq!(l.limit(), 16);
    for _ in 0..10 {
        tokio::time::advance(Duration::from_millis(250)).await;
        l.on_throttle();
    }
    assert_eq!(l.limit(), 1, "never below the minimum");
}

#[tokio::test(start_paused = true)]
async fn a_lower_ceiling_cuts_the_limit_and_a_higher_one_lets_it_grow() {
    let l = AdaptiveLimit::new(64, 1, 64);
    l.set_max(21);
    assert_eq!((l.limit(), l.max()), (21, 21));
    l.set_max(64);
    assert_eq!(l.limit(), 21, "grows back by measurement, not at once");
    for _ in 0..4 {
        window(&l, 10 * MS).await;
    }
    assert_eq!(l.limit(), 64);
    l.set_max(0);
    assert_eq!(l.limit(), 1, "never below the minimum");
}

/// A server: `parallel` requests served at once for `service` each, a
/// `round_trip` on top, and at most `max_rate` requests/s accepted (more
/// are answered SlowDown at once, as S3 does), if set.
struct Model {
    parallel: usize,
    service: Duration,
    round_trip: Duration,
    max_rate: Option<f64>,
}

/// What a run of the model measured.
#[derive(Debug)]
struct Run {
    /// Requests completed per second of (virtual) time.
    rate: f64,
    throttled: u64,
    final_limit: usize,
    /// Most requests in flight at once.
    peak: usize,
}

/// Drives `requests` requests through a fresh limiter (ceiling `max`)
/// against `model`, from as many tasks as the ceiling allows in flight.
async fn drive(model: Model, requests: u64, max: usize) -> Run {
    let model = Arc::new(model);
    let limit = AdaptiveLimit::new(INITIAL_LIMIT, 1, max);
    let server = Arc::new(Semaphore::new(model.parallel));
    let started = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let throttled = Arc::new(AtomicU64::new(0));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    // The rate limit: requests accepted so far.
    let accepted = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..max)
        .map(|_| {
            let (model, limit, server) = (model.clone(), limit.clone(), server.clone());
            let (done, throttled, accepted) = (done.clone(), throttled.clone(), accepted.clone());
            let (in_flight, peak) = (in_flight.clone(), peak.clone());
            tokio::spawn(async move {
                while done.load(Ordering::Relaxed) < requests {
                    let slot = limit.acquire().await;
                    let now = in_flight.fetch_add(1, Ordering::Relaxed) + 1;
                    peak.fetch_max(now, Ordering::Relaxed);
                    let t0 = Instant::now();
                    tokio::time::sleep(model.round_trip / 2).await;
                    let over_rate = model.max_rate.is_some_and(|r| {
                        let allowed = started.elapsed().as_secs_f64() * r + 10.0;
                        accepted.load(Ordering::Relaxed) as f64 >= allowed
                    });
                    if over_rate {
                        tokio::time::sleep(model.round_trip / 2).await;
                        in_flight.fetch_sub(1, Ordering::Relaxed);
                        throttled.fetch_add(1, Ordering::Relaxed);
                        limit.on_throttle();
                        continue;
                    }
                    accepted.fetch_add(1, Ordering::Relaxed);
                    {
                        let _serving = server.acquire().await.unwrap();
                        tokio::time::sleep(model.service).await;
                    }
                    tokio::time::sleep(model.round_trip / 2).await;
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                    limit.on_success(&slot, t0.elapsed(), 4096);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let run = Run {
        rate: done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64(),
        throttled: throttled.load(Ordering::Relaxed),
        final_limit: limit.limit(),
        peak: peak.load(Ordering::Relaxed),
    };
    println!("{run:?}");
    run
}

#[tokio::test(start_paused = true)]
async fn at_a_50_ms_round_trip_it_grows_to_the_server_s_capacity() {
    // 2,000 requests/s at most; a fixed limit of 64 would reach 1,000.
    let capacity = 2000.0;
    let run = drive(
        Model {
            parallel: 20,
            service: 10 * MS,
            round_trip: 50 * MS,
            max_rate: None,
        },
        40_000,
        1024,
    )
    .await;
    assert!(run.rate >= 0.9 * capacity, "{run:?}");
    // Enough in flight to fill the pipe (2,000/s x 60 ms = 120), not the
    // whole ceiling: the queue it keeps stays within the tolerance.
    assert!((120..=600).contains(&run.peak), "{run:?}");
}

#[tokio::test(start_paused = true)]
async fn on_loopback_it_keeps_the_queue_short() {
    // Two cores, 1 ms a request: 2,000/s, whatever is in flight.
    let run = drive(
        Model {
            parallel: 2,
            service: MS,
            round_trip: Duration::ZERO,
            max_rate: None,
        },
        20_000,
        1024,
    )
    .await;
    assert!(run.rate >= 0.9 * 2000.0, "{run:?}");
    assert!(run.final_limit <= 128, "no runaway queue: {run:?}");
}

#[tokio::test(start_paused = true)]
async fn it_backs_off_on_slow_down_and_holds_near_the_allowed_rate() {
    // Capacity for 10,000/s, but only 1,000/s allowed: the rest SlowDown.
    let run = drive(
        Model {
            parallel: 200,
            service: 10 * MS,
            round_trip: 20 * MS,
            max_rate: Some(1000.0),
        },
        20_000,
        1024,
    )
    .await;
    assert!(run.rate >= 0.8 * 1000.0, "{run:?}");
    assert!(
        run.throttled < 20_000 / 5,
        "throttled requests stay a minority: {run:?}"
    );
}

/// S3's copy path for large objects: each request moves its bytes at
/// `per_request` (bytes/s) after half a `round_trip`, and every request in
/// flight shares `aggregate` (a virtual clock the bytes queue on, as the
/// benchmark's proxy does).
struct ByteModel {
    per_request: f64,
    aggregate: f64,
    round_trip: Duration,
    object: u64,
}

/// Copies `objects` objects through a fresh limiter (ceiling `max`):
/// bytes per second reached, and the limit at the end.
async fn drive_bytes(model: ByteModel, objects: u64, max: usize) -> (f64, usize) {
    let model = Arc::new(model);
    let limit = AdaptiveLimit::new(INITIAL_LIMIT, 1, max);
    let next_free = Arc::new(std::sync::Mutex::new(Instant::now()));
    let started = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..max)
        .map(|_| {
            let (model, limit, next_free, done) = (
                model.clone(),
                limit.clone(),
                next_free.clone(),
                done.clone(),
            );
            tokio::spawn(async move {
                while done.load(Ordering::Relaxed) < objects {
                    let slot = limit.acquire().await;
                    let t0 = Instant::now();
                    tokio::time::sleep(model.round_trip / 2).await;
                    let own = Instant::now()
                        + Duration::from_secs_f64(model.object as f64 / model.per_request);
                    let shared = {
                        let mut next = next_free.lock().unwrap();
                        *next = (*next).max(Instant::now())
                            + Duration::from_secs_f64(model.object as f64 / model.aggregate);
                        *next
                    };
                    tokio::time::sleep_until(own.max(shared)).await;
                    tokio::time::sleep(model.round_trip / 2).await;
                    limit.on_success(&slot, t0.elapsed(), model.object);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let rate =
        (done.load(Ordering::Relaxed) * model.object) as f64 / started.elapsed().as_secs_f64();
    println!("{rate:.0} B/s, limit {}", limit.limit());
    (rate, limit.limit())
}

const MB: f64 = 1_000_000.0;

/// `objects` copies of 10 MB at S3's ~90 MB/s a request and a 50 ms round
/// trip, into a bucket that gives `aggregate` bytes/s, under a ceiling of
/// 1,024: bytes/s reached and the final limit.
async fn ten_mb_copies(aggregate: f64, objects: u64) -> (f64, usize) {
    let model = ByteModel {
        per_request: 90.0 * MB,
        aggregate,
        round_trip: 50 * MS,
        object: 10_000_000,
    };
    drive_bytes(model, objects, 1024).await
}

#[tokio::test(start_paused = true)]
async fn large_copies_grow_the_limit_while_bytes_per_second_rise() {
    // 10 MB objects at S3's ~90 MB/s a request and a 50 ms round trip: a
    // request takes 161 ms, so 64 in flight move 4 GB/s. The bucket gives
    // 20 GB/s: about 320 in flight are needed, which only a limit that
    // grows on bytes/s finds (one judged by small requests' latency never
    // hears from these copies and stays at 64).
    let aggregate = 20_000.0 * MB;
    let (rate, limit) = ten_mb_copies(aggregate, 40_000).await;
    assert!(rate >= 0.9 * aggregate, "{rate} of {aggregate}");
    assert!(limit > 300, "{limit}");
}

#[tokio::test(start_paused = true)]
async fn large_copies_stop_growing_where_the_bandwidth_runs_out() {
    // The same copies with 2 GB/s for the bucket: 32 in flight fill it.
    // Growth brings no bytes/s, so the limit holds near where it started
    // instead of queueing a thousand copies at S3.
    let aggregate = 2_000.0 * MB;
    let (rate, limit) = ten_mb_copies(aggregate, 10_000).await;
    assert!(rate >= 0.9 * aggregate, "{rate} of {aggregate}");
    assert!(limit <= 128, "{limit}");
}

#[tokio::test(start_paused = true)]
async fn a_growth_judged_by_small_requests_is_not_judged_by_large_ones() {
    let l = AdaptiveLimit::new(64, 1, 10_000);
    window(&l, 50 * MS).await; // 64 -> 128, on trial by the small window
    assert_eq!(l.limit(), 128);
    // Large windows end first, with far lower throughput than the small
    // one's: not their trial to judge (the first only fills the pipe, the
    // second is judged).
    let slots: Vec<_> = futures::future::join_all((0..128).map(|_| l.acquire())).await;
    tokio::time::advance(Duration::from_secs(10)).await;
    for s in slots.iter().chain(&slots) {
        l.on_success(s, Duration::from_secs(10), 10_000_000);
    }
    drop(slots);
    assert_eq!(l.limit(), 128, "the small requests' trial still pending");
    // The small window judges it: far fewer requests/s than before the
    // growth (10 s went by), so the growth is undone.
    window(&l, 50 * MS).await;
    assert_eq!(l.limit(), 64, "judged by its own class");
}

#[tokio::test(start_paused = true)]
async fn waiters_are_admitted_in_order_and_a_cut_takes_slots_back_as_requests_end() {
    let l = AdaptiveLimit::new(4, 1, 100);
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(l.acquire().await);
    }
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let waiter = |name: &'static str| {
        let (l, order) = (l.clone(), order.clone());
        tokio::spawn(async move {
            let slot = l.acquire().await;
            order.lock().unwrap().push(name);
            slot
        })
    };
    let first = waiter("first");
    tokio::task::yield_now().await;
    let second = waiter("second");
    tokio::task::yield_now().await;
    // Halved to 2 with 4 in flight: two slots are owed.
    assert!(l.on_throttle());
    held.pop();
    held.pop();
    tokio::task::yield_now().await;
    assert!(
        order.lock().unwrap().is_empty(),
        "the first two to end pay the debt"
    );
    held.pop();
    let a = first.await.unwrap();
    assert_eq!(*order.lock().unwrap(), ["first"]);
    // One arriving now queues behind the one already waiting.
    let third = waiter("third");
    tokio::task::yield_now().await;
    held.pop();
    let b = second.await.unwrap();
    drop(a);
    let c = third.await.unwrap();
    assert_eq!(*order.lock().unwrap(), ["first", "second", "third"]);
    drop((b, c));
}

#[tokio::test(start_paused = true)]
async fn a_growth_its_class_never_judges_is_undone_not_kept() {
    let l = AdaptiveLimit::new(64, 1, 10_000);
    window(&l, 50 * MS).await; // 64 -> 128, on trial by the small window
    assert_eq!(l.limit(), 128);
    // Only large copies from now on: after two of their windows the
    // small class's growth has waited enough and is undone.
    let large_window = |l: Arc<AdaptiveLimit>| async move {
        let n = l.limit();
        let slots: Vec<_> = futures::future::join_all((0..n).map(|_| l.acquire())).await;
        tokio::time::advance(Duration::from_secs(1)).await;
        for s in &slots {
            l.on_success(s, Duration::from_secs(1), 10_000_000);
        }
    };
    large_window(l.clone()).await; // fills the pipe
    large_window(l.clone()).await; // waited 1
    large_window(l.clone()).await; // waited 2
    assert_eq!(l.limit(), 128);
    large_window(l.clone()).await; // expired: undone
    assert_eq!(l.limit(), 64);
}

#[tokio::test(start_paused = true)]
async fn a_lower_ceiling_is_not_undone_back_over_by_a_pending_trial() {
    let l = AdaptiveLimit::new(64, 1, 10_000);
    window(&l, 50 * MS).await; // 64 -> 128, on trial
                               // The ceiling drops below where the growth started (64).
    l.set_max(50);
    assert_eq!(l.limit(), 50);
    // A window far slower in throughput than before the growth would undo
    // it, to 64: over the ceiling.
    tokio::time::advance(Duration::from_secs(10)).await;
    window(&l, 50 * MS).await;
    assert!(l.limit() <= 50, "{}", l.limit());
}
