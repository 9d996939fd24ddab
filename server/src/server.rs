//! Assembles the gRPC server: the cache service, health and reflection.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use expresscache::proto::v1::cache_service_server::CacheServiceServer;
use expresscache::Limits;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::api::Api;
use crate::clock::{Clock, SystemClock};
use crate::evict::{spawn_sweeper, Evictor};
use crate::index::CacheIndex;
use crate::ops::Operations;
use crate::store::ObjectStore;
use crate::warm::{WarmSettings, Warmer};

/// Everything the service runs on.
#[derive(Debug)]
pub struct Deps<S, I> {
    pub store: Arc<S>,
    pub index: Arc<I>,
    pub warm: WarmSettings,
    pub limits: Limits,
    /// How often a running warm publishes progress to its followers.
    pub publish_interval: Duration,
    pub clock: Arc<dyn Clock>,
    /// How often the expiry sweeper runs; `None` disables it.
    pub sweep_interval: Option<Duration>,
}

impl<S, I> Deps<S, I> {
    pub fn new(store: S, index: I) -> Self {
        Self {
            store: Arc::new(store),
            index: Arc::new(index),
            warm: WarmSettings::default(),
            limits: Limits::default(),
            publish_interval: Duration::from_millis(500),
            clock: Arc::new(SystemClock),
            sweep_interval: Some(Duration::from_secs(60)),
        }
    }
}

/// Serves gRPC on `listener` until `shutdown` resolves.
pub async fn serve<S, I, F>(
    listener: TcpListener,
    deps: Deps<S, I>,
    shutdown: F,
) -> Result<(), tonic::transport::Error>
where
    S: ObjectStore,
    I: CacheIndex,
    F: Future<Output = ()> + Send,
{
    let evictor = Arc::new(Evictor {
        store: Arc::clone(&deps.store),
        index: Arc::clone(&deps.index),
        clock: Arc::clone(&deps.clock),
        claim_ttl: deps.warm.claim_ttl,
    });
    let warmer = Arc::new(Warmer {
        store: deps.store,
        index: deps.index,
        clock: deps.clock,
        settings: deps.warm,
    });
    let ops = Arc::new(Operations::new(warmer, deps.publish_interval));
    let sweeper = deps
        .sweep_interval
        .map(|every| spawn_sweeper(Arc::clone(&evictor), every));
    let api = Api::new(ops, evictor, deps.limits);

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<CacheServiceServer<Api<S, I>>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(expresscache::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the embedded descriptor sets are valid");

    let served = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(CacheServiceServer::new(api))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await;
    if let Some(s) = sweeper {
        s.abort();
    }
    served
}
