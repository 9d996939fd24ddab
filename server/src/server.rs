//! Assembles the gRPC server: the cache service, health and reflection.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use expresscache::proto::v1::cache_service_server::CacheServiceServer;
use expresscache::Limits;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic_reflection::server::{v1, v1alpha};

use crate::api::Api;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::core::clock::{Clock, SystemClock};
use crate::evict::{spawn_sweeper, EvictSettings, Evictor};
use crate::fleet::{Operations, OpsSettings};
use crate::index::FleetIndex;
use crate::store::ObjectStore;
use crate::warm::{WarmSettings, Warmer};

/// Everything the service runs on.
#[derive(Debug)]
pub struct Deps<S, I> {
    pub store: Arc<S>,
    pub index: Arc<I>,
    pub warm: WarmSettings,
    pub evict: EvictSettings,
    pub limits: Limits,
    pub ops: OpsSettings,
    pub clock: Arc<dyn Clock>,
    /// How often the expiry sweeper runs; `None` disables it.
    pub sweep_interval: Option<Duration>,
    /// On shutdown, how long running warms may take to finish before they
    /// are interrupted (and resumed by the next start).
    pub shutdown_grace: Duration,
    /// Cached entries one GetStatus call counts at most.
    pub status_count_limit: u64,
    /// Largest request message handled.
    pub max_request_size: u64,
    /// Concurrent gRPC streams one client connection may hold.
    pub max_streams_per_connection: u32,
    /// TLS on the gRPC port.
    pub tls: Option<crate::tls::TlsFiles>,
    /// Names callers (anonymous unless tokens or a client CA are set).
    pub auth: Arc<Authenticator>,
    /// Who may do what; `None`: single-tenant.
    pub policy: Option<Arc<crate::policy::Policy>>,
    /// Prices for dry runs' estimates.
    pub prices: crate::pricing::PriceTable,
    /// S3 Batch Operations offload, when configured.
    pub batch: Option<Arc<crate::batch::Offload>>,
}

impl<S, I> Deps<S, I> {
    /// The defaults, over `store` and `index`.
    #[cfg(any(test, feature = "testing"))]
    pub fn new(store: S, index: I) -> Self {
        Self::from_config(store, index, &Config::default())
    }

    /// Everything `config` sets, over `store` and `index`, on the system
    /// clock.
    pub fn from_config(store: S, index: I, config: &Config) -> Self {
        Self {
            store: Arc::new(store),
            index: Arc::new(index),
            warm: WarmSettings::from(config),
            evict: EvictSettings::from(config),
            limits: config.limits(),
            ops: OpsSettings::from(config),
            clock: Arc::new(SystemClock),
            sweep_interval: Some(config.sweep_interval),
            shutdown_grace: config.shutdown_grace,
            status_count_limit: config.status_count_limit,
            max_request_size: config.max_request_size,
            max_streams_per_connection: config.max_streams_per_connection,
            tls: config.tls.clone(),
            auth: Arc::default(),
            policy: None,
            prices: crate::pricing::PriceTable::default(),
            batch: None,
        }
    }
}

/// Serves gRPC on `listener` until `shutdown` resolves, then drains:
/// health turns NOT_SERVING, new warms are refused, followers' streams end
/// with UNAVAILABLE, running warms get the grace period to finish and are
/// interrupted (checkpointed, resumed on the next start) after it.
///
/// On start it resumes the warms a previous run left unfinished.
pub async fn serve<S, I, F>(
    listener: TcpListener,
    deps: Deps<S, I>,
    shutdown: F,
) -> Result<(), ServeError>
where
    S: ObjectStore,
    I: FleetIndex,
    F: Future<Output = ()> + Send,
{
    let (evictor, ops) = services(&deps);
    let tls = match &deps.tls {
        Some(files) => Some(crate::tls::server_config(files).map_err(ServeError::Tls)?),
        None => None,
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_not_serving::<CacheServiceServer<Api>>().await;
    // Joins the fleet (and resumes unfinished warms) in the background: a
    // slow or throttled index keeps this replica NOT_SERVING, never stops
    // it, so an index brownout cannot take every replica down at once.
    let mut background = vec![spawn_fleet_member(
        Arc::clone(&ops),
        deps.ops.adopt_every,
        health.clone(),
    )];
    if let Some(every) = deps.sweep_interval {
        background.push(spawn_sweeper(Arc::clone(&evictor), every));
    }
    background.push(spawn_purger(Arc::clone(&ops), deps.ops.retention));
    let (reflection_v1, reflection_v1alpha) = reflection();
    let cache_service = authenticated(api(&deps, &ops, evictor), Arc::clone(&deps.auth));
    let tls = tls.map(|(config, cert)| {
        background.push(crate::tls::spawn_reloader(cert, Duration::from_secs(10)));
        config
    });
    let grace = deps.shutdown_grace;
    let drain = {
        let ops = Arc::clone(&ops);
        async move {
            shutdown.await;
            health.set_not_serving::<CacheServiceServer<Api>>().await;
            ops.drain(grace).await;
            ops.leave().await;
        }
    };
    let router = tonic::transport::Server::builder()
        .trace_fn(crate::telemetry::rpc_span)
        .max_concurrent_streams(deps.max_streams_per_connection)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(cache_service);
    let served = match tls {
        Some(config) => {
            router
                .serve_with_incoming_shutdown(crate::tls::incoming(listener, config), drain)
                .await
        }
        None => {
            router
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), drain)
                .await
        }
    };
    for task in background {
        task.abort();
    }
    Ok(served?)
}

/// The evictor and the operations (over the warmer) that `deps` build.
fn services<S: ObjectStore, I: FleetIndex>(deps: &Deps<S, I>) -> (Arc<Evictor>, Arc<Operations>) {
    let evictor = Arc::new(Evictor::new(
        deps.store.clone(),
        deps.index.clone(),
        Arc::clone(&deps.clock),
        deps.evict.clone(),
    ));
    let mut warmer = Warmer::new(
        deps.store.clone(),
        deps.index.clone(),
        Arc::clone(&deps.clock),
        deps.warm.clone(),
    );
    warmer.batch = deps.batch.clone();
    let ops = Arc::new(Operations::new(
        Arc::new(warmer),
        deps.index.clone(),
        deps.ops.clone(),
        deps.limits,
    ));
    (evictor, ops)
}

/// The cache service over `ops` and `evictor`, with `deps`' limits.
fn api<S, I>(
    deps: &Deps<S, I>,
    ops: &Arc<Operations>,
    evictor: Arc<Evictor>,
) -> CacheServiceServer<Api> {
    let api = Api::new(Arc::clone(ops), evictor, deps.limits)
        .with_status_count_limit(deps.status_count_limit)
        .with_max_request_size(deps.max_request_size)
        .with_policy(deps.policy.clone())
        .with_prices(deps.prices.clone());
    // tonic's own decoding limit only guards memory; the API answers
    // requests between the two with RESOURCE_EXHAUSTED and the sizes.
    let decode_limit =
        usize::try_from(deps.max_request_size.saturating_mul(4)).unwrap_or(usize::MAX);
    CacheServiceServer::new(api).max_decoding_message_size(decode_limit)
}

/// gRPC reflection in both versions: grpcurl and newer tools speak v1,
/// older clients and GUIs only v1alpha.
fn reflection() -> (
    v1::ServerReflectionServer<impl v1::ServerReflection>,
    v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>,
) {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(expresscache::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = builder()
        .build_v1()
        .expect("the embedded descriptor sets are valid");
    let v1alpha = builder()
        .build_v1alpha()
        .expect("the embedded descriptor sets are valid");
    (v1, v1alpha)
}

/// `service` with every call naming its caller first (health and
/// reflection stay open: probes and tools need no identity).
fn authenticated<S>(
    service: S,
    auth: Arc<Authenticator>,
) -> tonic::service::interceptor::InterceptedService<S, impl tonic::service::Interceptor + Clone> {
    tonic::service::interceptor::InterceptedService::new(
        service,
        move |mut req: tonic::Request<()>| {
            let principal = auth.authenticate(&req)?;
            req.extensions_mut().insert(principal);
            Ok(req)
        },
    )
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    #[error("resuming unfinished warms: {0}")]
    Index(#[from] crate::index::IndexError),
    #[error("TLS: {0:#}")]
    Tls(anyhow::Error),
}

/// The health service name that reports whether this replica's clock is
/// within half the skew margin of S3's.
pub const CLOCK_HEALTH: &str = "expresscache.clock";

/// Joins the fleet: heartbeats until the index answers (health stays
/// NOT_SERVING meanwhile), turns health SERVING, then every `every` says
/// this replica is alive (and re-splits the bucket budgets among the live
/// ones) and takes over operations whose run lapsed (their replica died,
/// or released them on shutdown), including those a previous run of this
/// replica left.
fn spawn_fleet_member(
    ops: Arc<Operations>,
    every: Duration,
    health: tonic_health::server::HealthReporter,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Joined before resuming anything, so this replica copies with its
        // share of each bucket's budget from the start.
        let backoff = expresscache::Backoff::new(every.min(Duration::from_millis(500)), every * 5);
        let mut attempt = 0u32;
        loop {
            if *ops.draining().borrow() {
                return;
            }
            match ops.heartbeat().await {
                Ok(replicas) => {
                    tracing::info!(replica = %ops.replica(), replicas, "joined the replicas sharing the index");
                    break;
                }
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt,
                        "the index does not answer the heartbeat; NOT_SERVING until it does");
                    tokio::time::sleep(backoff.delay_at(attempt, fastrand::f64()).max(every / 4))
                        .await;
                }
            }
        }
        if !*ops.draining().borrow() {
            health.set_serving::<CacheServiceServer<Api>>().await;
            health
                .set_service_status(CLOCK_HEALTH, tonic_health::ServingStatus::Serving)
                .await;
        }
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut clock_ok = true;
        loop {
            tick.tick().await;
            // Health says whether this replica's clock lets it sweep, evict
            // and take over (a service of its own: warms still run).
            let clock = crate::skew::global().check(ops.skew_margin());
            if clock.is_ok() != clock_ok {
                clock_ok = clock.is_ok();
                let status = match &clock {
                    Ok(()) => tonic_health::ServingStatus::Serving,
                    Err(why) => {
                        tracing::error!(reason = %why, "clock skew beyond the margin");
                        tonic_health::ServingStatus::NotServing
                    }
                };
                health.set_service_status(CLOCK_HEALTH, status).await;
            }
            // A draining replica leaves the registry; it must not rejoin.
            if *ops.draining().borrow() {
                return;
            }
            if let Err(e) = ops.heartbeat().await {
                tracing::warn!(error = %e, "replica heartbeat failed");
            }
            match ops.adopt_orphans().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(resumed = n, "took over unfinished warms"),
                Err(e) => tracing::warn!(error = %e, "looking for orphaned warms failed"),
            }
        }
    })
}

/// Purges finished operations past their retention, hourly (or every
/// tenth of the retention, if shorter).
fn spawn_purger(ops: Arc<Operations>, retention: Duration) -> tokio::task::JoinHandle<()> {
    let every = (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            match ops.purge().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(purged = n, "purged finished operations"),
                Err(e) => tracing::warn!(error = %e, "purging operations failed"),
            }
        }
    })
}
