//! The production wiring: AWS configuration chain, SQLite index, signals.

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::{Config, IndexLocation, LogFormat};
use crate::index::SqliteIndex;
use crate::server::{serve, Deps};
use crate::store::{ObjectStore, S3Store};

/// Installs the global tracing subscriber (RUST_LOG filters, default info).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// An S3 client from the standard AWS configuration chain (environment,
/// profiles, SSO, instance/container credentials), so AWS_ENDPOINT_URL,
/// AWS_ENDPOINT_URL_S3, AWS_REGION and AWS_PROFILE all apply unchanged.
pub async fn s3_client(force_path_style: bool) -> aws_sdk_s3::Client {
    let shared = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let conf = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(force_path_style)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Resolves once SIGINT or SIGTERM arrives.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received; draining");
}

/// The object store of the production binary: S3 (or any S3-compatible
/// endpoint) through the standard AWS configuration chain.
pub async fn s3_store(config: &Config) -> S3Store {
    S3Store::with_request_timeout(
        s3_client(config.force_path_style).await,
        config.s3_request_timeout,
    )
}

/// Runs the server described by `config` on `store` until a shutdown
/// signal. The store is a parameter so tests and diagnostics can run the
/// same server over their own (an in-memory or fault-injecting store).
pub async fn run<S: ObjectStore>(config: Config, store: S) -> anyhow::Result<()> {
    let index = match &config.index {
        IndexLocation::Sqlite(path) => {
            SqliteIndex::open(path).with_context(|| format!("opening index {}", path.display()))?
        }
        IndexLocation::SqliteMemory => SqliteIndex::open_in_memory()?,
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let deps = Deps::from_config(store, index, &config);
    if config.allow_general_purpose_destination {
        tracing::warn!("general-purpose buckets are accepted as destinations (--allow-general-purpose-destination): meant for S3-compatible test endpoints, not for production");
    }
    tracing::info!(listen = %listener.local_addr()?, index = ?config.index, max_concurrency = config.max_concurrency, "expresscache-server listening");
    serve(listener, deps, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}
