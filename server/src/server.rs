//! Assembles the gRPC server: the cache service, health and reflection.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use expresscache::proto::v1::cache_service_server::CacheServiceServer;
use expresscache::Limits;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::api::Api;
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
}

impl<S, I> Deps<S, I> {
    pub fn new(store: S, index: I) -> Self {
        Self {
            store: Arc::new(store),
            index: Arc::new(index),
            warm: WarmSettings::default(),
            limits: Limits::default(),
            publish_interval: Duration::from_millis(500),
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
    let warmer = Arc::new(Warmer {
        store: Arc::clone(&deps.store),
        index: Arc::clone(&deps.index),
        settings: deps.warm,
    });
    let ops = Arc::new(Operations::new(warmer, deps.publish_interval));
    let api = Api::new(deps.store, deps.index, ops, deps.limits);

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<CacheServiceServer<Api<S, I>>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(expresscache::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the embedded descriptor sets are valid");

    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(CacheServiceServer::new(api))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
}
