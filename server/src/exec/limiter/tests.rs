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
    // A slow answer to a request admitted under the old limit, and a large
    // copy: neither says anything about the new limit.
    for _ in 0..1000 {
        l.on_success(&slots[0], 900 * MS, 4096);
    }
    let new = l.acquire().await;
    for _ in 0..1000 {
        l.on_success(&new, 900 * MS, 64 * 1024 * 1024);
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
